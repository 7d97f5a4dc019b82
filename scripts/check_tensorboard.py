#!/usr/bin/env python3
"""Load a TensorBoard log directory with TensorBoard's own reader and print every scalar.

    python3 scripts/check_tensorboard.py DIR

Needs the `tensorboard` package (pip install tensorboard). Prints, for each scalar tag, its steps and
values; exits 1 if the directory holds no scalars (or cannot be read), 2 on bad usage or a missing
tensorboard package. Used to check that TensorBoardWriter's event files are readable by TensorBoard.
"""
import os
import sys


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = argv[1]
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as e:
        print(f"check_tensorboard: cannot import tensorboard ({e}); pip install tensorboard", file=sys.stderr)
        return 2
    if not os.path.exists(path):
        print(f"check_tensorboard: {path}: no such file or directory", file=sys.stderr)
        return 1

    # size_guidance 0 = keep every event, not a reservoir sample.
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if not tags:
        print(f"check_tensorboard: no scalars found in {path}", file=sys.stderr)
        return 1
    print(f"{path}: {len(tags)} scalar tag(s), file_version={acc.file_version!r}")
    for tag in sorted(tags):
        events = acc.Scalars(tag)
        print(f"{tag}: {len(events)} point(s)")
        for ev in events:
            print(f"  step {ev.step:>8}  value {ev.value:.6g}  wall_time {ev.wall_time:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
