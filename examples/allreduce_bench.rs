//! Time the gradient all-reduce of ViT-S/16 and ViT-B/16 (f32, 1000 classes) between the
//! ranks of an MPI job, as the trainer does it (one flat buffer, through host memory):
//! `mpirun -np 2 target/release/examples/allreduce_bench`
//! (`cargo build --release --features mpi --example allreduce_bench`).

use std::time::Instant;

fn main() {
    let dist = vitrs::dist::init().expect("MPI");
    // Trainable parameters of the presets with a 1000-class head (`vitrs` prints them).
    for (name, params) in [("ViT-S/16", 22_050_664usize), ("ViT-B/16", 86_567_656)] {
        let mut buf = vec![1.0f32; params];
        dist.all_reduce_sum(&mut buf); // warm-up (allocations, connections)
        assert_eq!(buf[params / 2], dist.size() as f32);
        let reps = 5;
        let mut times = Vec::new();
        for _ in 0..reps {
            dist.barrier();
            let t = Instant::now();
            dist.all_reduce_sum(&mut buf);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        if dist.is_main() {
            println!(
                "{name}: {:.0} MB over {} ranks: median {:.1} ms, min {:.1} ms ({reps} runs)",
                4.0 * params as f64 / 1e6,
                dist.size(),
                1e3 * times[reps / 2],
                1e3 * times[0]
            );
        }
    }
    vitrs::dist::finalize();
}
