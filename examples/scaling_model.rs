//! The data-parallel cost model of docs/scaling.md: ring all-reduce time of ViT-S/16 and
//! ViT-B/16 gradients (f32, 1000 classes) on 8–64 ranks at 100–400 Gb/s, as a table and a
//! plot, and the scaling efficiency for step times you measured.
//!
//! `cargo run --release --example scaling_model -- docs/scaling.png [vit-s-ms vit-b-ms]`
//! (the optional numbers: one rank's compute time per optimizer step, in milliseconds).

use vitrs::config::Config;
use vitrs::dist::ring_all_reduce_secs;
use vitrs::model::VisionTransformer;
use vitrs::model::params::count_params;

fn params(preset: &str) -> usize {
    let cfg = {
        let mut c = Config::default();
        c.model.name = preset.into();
        c
    };
    let vit = cfg.vit_config(224, 3, 1000).expect("preset");
    let model = VisionTransformer::new(&vit, 0, &burn::tensor::Device::flex()).expect("model");
    count_params(&model).0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().cloned().unwrap_or("scaling.png".into());
    let step_ms: Vec<f64> = args[1.min(args.len())..]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let models = [
        ("ViT-S/16", params("vit-small")),
        ("ViT-B/16", params("vit-base")),
    ];
    let ranks = [8usize, 16, 32, 64];
    let links = [100.0, 200.0, 400.0];

    println!("| model | params | gradient MB | link | 8 ranks | 16 | 32 | 64 |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for (name, p) in models {
        let bytes = 4.0 * p as f64;
        for gbps in links {
            let cells: Vec<String> = ranks
                .iter()
                .map(|&n| format!("{:.1} ms", 1e3 * ring_all_reduce_secs(bytes, n, gbps)))
                .collect();
            println!(
                "| {name} | {:.1} M | {:.0} | {gbps:.0} Gb/s | {} |",
                p as f64 / 1e6,
                bytes / 1e6,
                cells.join(" | ")
            );
        }
    }
    if step_ms.len() == 2 {
        println!("\nscaling efficiency (compute / (compute + all-reduce), no overlap):");
        for ((name, p), ms) in models.iter().zip(&step_ms) {
            for gbps in links {
                let eff: Vec<String> = ranks
                    .iter()
                    .map(|&n| {
                        let ar = 1e3 * ring_all_reduce_secs(4.0 * *p as f64, n, gbps);
                        format!("{:.0}%", 100.0 * ms / (ms + ar))
                    })
                    .collect();
                println!("{name} {ms} ms/step, {gbps:.0} Gb/s: {}", eff.join(" "));
            }
        }
    }

    let lines: Vec<vitrs::report::plots::Line> = models
        .iter()
        .flat_map(|(name, p)| {
            links.iter().map(move |&gbps| {
                let pts = (1..=8)
                    .map(|k| {
                        let n = 8 * k;
                        (
                            n as f64,
                            1e3 * ring_all_reduce_secs(4.0 * *p as f64, n, gbps),
                        )
                    })
                    .collect();
                (
                    format!("{name}, {gbps:.0} Gb/s"),
                    pts,
                    name.starts_with("ViT-S"),
                )
            })
        })
        .collect();
    vitrs::report::plots::plot_lines(
        std::path::Path::new(&out),
        "Ring all-reduce per optimizer step (f32 gradients)",
        "ranks (GPUs)",
        "all-reduce time (ms)",
        &lines,
    )
    .expect("plot");
    eprintln!("wrote {out}");
}
