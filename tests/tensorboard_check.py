#!/usr/bin/env python3
"""Check that a vitrs run directory's TensorBoard event files match its metrics.jsonl.

Usage: python3 tests/tensorboard_check.py RUN_DIR

Loads RUN_DIR with TensorBoard's own EventAccumulator (everything, no sampling) and compares
every scalar tag with what metrics.jsonl implies, using the mapping of
`report::tensorboard::log_record`:

    <split>/loss, <split>/acc (a fraction), <split>/lr and <split>/img_s when present,
    and each extra numeric key as <split>/<key>

The tags train/loss, train/acc, train/lr, val/loss and val/acc must exist; every tag must have
the same number of points at the same steps, with values equal after rounding to float32
(TensorBoard stores float32). Exits 1 with a message naming the first mismatch, 2 on usage or
missing files. Needs `pip install tensorboard`.
"""

import json
import math
import os
import struct
import sys

REQUIRED_TAGS = ["train/loss", "train/acc", "train/lr", "val/loss", "val/acc"]
# Keys of a metrics record that are not scalars to log.
NON_SCALAR_KEYS = {"split", "epoch", "step", "time"}
OPTIONAL_KEYS = ["lr", "img_s"]


def fail(message, code=1):
    print(f"tensorboard_check: FAIL: {message}", file=sys.stderr)
    sys.exit(code)


def to_f32(value):
    """The float32 TensorBoard would store for `value` (None = NaN, as serde_json writes it)."""
    if value is None:
        return math.nan
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def same_f32(expected, actual):
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    if expected == actual:
        return True
    return math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-30)


def expected_scalars(metrics_path):
    """tag -> [(step, float32 value)] in file order."""
    expected = {}
    with open(metrics_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                split, step = record["split"], int(record["step"])
            except (ValueError, KeyError, TypeError) as e:
                fail(f"{metrics_path}: line {number} is not a metric record: {e}")

            def add(key, value):
                expected.setdefault(f"{split}/{key}", []).append((step, to_f32(value)))

            add("loss", record.get("loss"))
            add("acc", record.get("acc"))
            for key in OPTIONAL_KEYS:
                if record.get(key) is not None:
                    add(key, record[key])
            known = NON_SCALAR_KEYS | {"loss", "acc"} | set(OPTIONAL_KEYS)
            for key in sorted(set(record) - known):
                value = record[key]
                # Non-numeric extras are not logged (MetricRecord drops them).
                if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    add(key, value)
    return expected


def load_event_scalars(run_dir):
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        fail("tensorboard is not installed (pip install tensorboard)", code=2)
    guidance = {
        event_accumulator.SCALARS: 0,
        event_accumulator.TENSORS: 0,
        event_accumulator.COMPRESSED_HISTOGRAMS: 0,
        event_accumulator.HISTOGRAMS: 0,
        event_accumulator.IMAGES: 0,
        event_accumulator.AUDIO: 0,
    }
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance=guidance)
    acc.Reload()
    scalars = {
        tag: [(event.step, event.value) for event in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }
    return acc, scalars


def plugin_content(acc, plugin):
    """tag -> plugin content bytes, {} when the plugin has no data."""
    try:
        return acc.PluginTagToContent(plugin)
    except KeyError:
        return {}


def describe_extras(acc):
    """Text and hparams summaries, for the summary line (informational, never a failure)."""
    notes = []
    for tag in sorted(plugin_content(acc, "text")):
        events = acc.Tensors(tag)
        first_line = events[0].tensor_proto.string_val[0].decode("utf-8").splitlines()[0]
        notes.append(f"text {tag!r}: {len(events)} event(s), starting {first_line!r}")
    try:
        from tensorboard.plugins.hparams import metadata as hp_metadata

        for tag, raw in plugin_content(acc, "hparams").items():
            if tag == hp_metadata.SESSION_START_INFO_TAG:
                info = hp_metadata.parse_session_start_info_plugin_data(raw)
                notes.append(f"hparams session_start_info: {', '.join(sorted(info.hparams))}")
    except Exception as e:  # informational only
        notes.append(f"hparams unreadable: {e}")
    return notes


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    run_dir = argv[1]
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        fail(f"{metrics_path} does not exist", code=2)
    if not any("tfevents" in name for name in os.listdir(run_dir)):
        fail(f"{run_dir} has no events.out.tfevents.* file", code=2)

    expected = expected_scalars(metrics_path)
    acc, actual = load_event_scalars(run_dir)

    missing = [tag for tag in REQUIRED_TAGS if tag not in actual]
    if missing:
        fail(f"required scalar tags missing from the event files: {', '.join(missing)} "
             f"(found: {', '.join(sorted(actual)) or 'none'})")
    unexpected = sorted(set(actual) - set(expected))
    if unexpected:
        fail(f"scalar tags not implied by metrics.jsonl: {', '.join(unexpected)}")
    absent = sorted(set(expected) - set(actual))
    if absent:
        fail(f"metrics.jsonl implies tags the event files lack: {', '.join(absent)}")

    total = 0
    for tag in sorted(expected):
        want, got = expected[tag], actual[tag]
        if len(want) != len(got):
            fail(f"{tag}: {len(got)} points in the event files, {len(want)} in metrics.jsonl")
        for i, ((want_step, want_value), (got_step, got_value)) in enumerate(zip(want, got)):
            if want_step != got_step:
                fail(f"{tag}: point {i} is at step {got_step}, metrics.jsonl says {want_step}")
            if not same_f32(want_value, got_value):
                fail(f"{tag} at step {got_step}: event value {got_value!r}, "
                     f"metrics.jsonl {want_value!r} (as float32)")
        total += len(want)

    extras = describe_extras(acc)
    suffix = f" ({'; '.join(extras)})" if extras else ""
    print(f"tensorboard_check: {total} scalars in {len(expected)} tags match metrics.jsonl{suffix}")


if __name__ == "__main__":
    main(sys.argv)
