"""Benchmark: our image/video preprocessing vs the model card's code, single-threaded.

    .venv/bin/python benchmarks/preprocess.py [--runs N] [--clock cpu|wall] [--cpu N] [--no-video]

For each case both sides decode the same JPEG bytes. Columns, in ms per image (median over
--runs, the functions called in a rotated order run by run): `decode` is Image.open + load
alone (the floor); `card` is the card's load_image; `tile` is what our CPU workers run
(decode + uint8 tiles); `load_image` is our card-compatible float output; `x card` is card
time / ours, paired run by run, median (min-max). Video: ms per clip for load_video,
`decode` being the sampled frames' decoding alone. Before timing, each case's outputs are
compared tile by tile (frame by frame) with the card's: a difference prints the tiles that
differ and makes the benchmark exit 1.

Every library runs one thread. The default clock is the process's CPU time (all threads,
so decoder threads count too), which equals wall time on an idle core but, unlike it, does
not count time spent waiting for a core on a busy machine; `--clock wall` measures wall
time, `--cpu N` pins the process to core N.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy/torch/numba start their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from internvl_batch import preprocess  # noqa: E402
from internvl_batch.devtools import card_reference as card  # noqa: E402
from internvl_batch.media.tiling import tile_image  # noqa: E402

CACHE = REPO / ".cache" / "bench"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


Clock = Callable[[], float]


def times_ms(fns: dict[str, Callable[[], object]], runs: int, clock: Clock) -> dict[str, list[float]]:
    """Each fn's time per run (ms), runs interleaved in a rotated order so that machine noise
    and cache warmth hit all alike."""

    def timed(fn: Callable[[], object]) -> Callable[[int], float]:
        def call(_run: int) -> float:
            start = clock()
            fn()
            return (clock() - start) * 1e3

        return call

    for fn in fns.values():  # warm-up
        fn()
    return common.run_rotated({name: timed(fn) for name, fn in fns.items()}, runs, label="  ")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def check_equal(check: common.AnswerCheck, what: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Tile by tile (frame by frame): the rows named on a difference."""
    check.compare(what, "card", common.tensor_rows(ref), "ours", common.tensor_rows(ours))


# ------------------------------------------------------------------------------ images


def collage(size: tuple[int, int]) -> Image.Image:
    """Photo content at any size: scikit-image photos side by side, resized, with sensor-like
    noise so the JPEG carries real high-frequency detail."""
    import skimage.data

    data_dir = Path(skimage.data.data_dir)
    photos = [Image.open(data_dir / name).convert("RGB").resize((512, 384)) for name in PHOTOS]
    per_row = 3 if size[0] / size[1] < 4 else len(photos)
    rows = [photos[i : i + per_row] for i in range(0, len(photos), per_row)]
    canvas = Image.new("RGB", (512 * per_row, 384 * len(rows)))
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            canvas.paste(p, (512 * c, 384 * r))
    pixels = np.asarray(canvas.resize(size)).astype(np.int16)
    pixels += np.random.default_rng(0).normal(0, 3, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def ours_tiles(data: bytes, max_num: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return tile_image(img if img.mode == "RGB" else img.convert("RGB"), max_num=max_num)


def decode(data: bytes) -> None:
    Image.open(io.BytesIO(data)).load()


def bench_images(runs: int, clock: Clock, check: common.AnswerCheck) -> None:
    start = time.perf_counter()
    ours_tiles(jpeg_bytes(collage((64, 48))), 12)
    first_call = time.perf_counter() - start
    print(f"first call (numba kernels from cache or compiled, pyarrow import): {first_call:.2f} s\n")

    header = (
        f"{'image':>10} {'max':>3} {'tiles':>5} | {'decode':>7} {'card':>7} | "
        f"{'tile':>7} {'x card':>16} {'tiles/s':>7} | {'load_image':>10} {'x card':>16}"
    )
    rows: list[str] = []
    figures: list[tuple] = []
    for size in ((1024, 768), (4000, 3000), (5000, 400)):
        data = jpeg_bytes(collage(size))
        for max_num in (12, 6):
            case = f"{size[0]}x{size[1]} max {max_num}"
            ref = card.load_image(io.BytesIO(data), max_num=max_num)
            check_equal(check, f"load_image {case}", preprocess.load_image(io.BytesIO(data), max_num=max_num), ref)
            tiles = ours_tiles(data, max_num)  # the uint8 tiles are the card's before normalisation
            card_u8 = np.stack([np.asarray(t) for t in card.dynamic_preprocess(
                Image.open(io.BytesIO(data)).convert("RGB"), max_num=max_num, use_thumbnail=True)])  # fmt: skip
            check_equal(check, f"tiles {case}", torch.from_numpy(tiles), torch.from_numpy(card_u8))
            t = times_ms(
                {
                    "decode": lambda: decode(data),
                    "card": lambda: card.load_image(io.BytesIO(data), max_num=max_num),
                    "tile": lambda: ours_tiles(data, max_num),
                    "load_image": lambda: preprocess.load_image(io.BytesIO(data), max_num=max_num),
                },
                runs,
                clock,
            )
            ms = {k: median(v) for k, v in t.items()}
            x_tile, x_load = common.ratios(t["card"], t["tile"]), common.ratios(t["card"], t["load_image"])
            n = ref.shape[0]
            rows.append(
                f"{size[0]:>5}x{size[1]:<4} {max_num:>3} {n:>5} | {ms['decode']:>7.1f} {ms['card']:>7.1f} | "
                f"{ms['tile']:>7.1f} {common.fmt_spread(x_tile, '.2f'):>16} {n / ms['tile'] * 1e3:>7.0f} | "
                f"{ms['load_image']:>10.1f} {common.fmt_spread(x_load, '.2f'):>16}"
            )
            figures += [(f"tile ms/image, {case} ({n} tiles)", t["tile"], "ms", ".1f"),
                        (f"tile vs card, {case}", x_tile, "x", ".2f"),
                        (f"load_image vs card, {case}", x_load, "x", ".2f")]  # fmt: skip
    print("\n" + header)
    print("-" * len(header))
    print("\n".join(rows) + "\n")
    for fig in figures:
        common.emit(*fig)


# ------------------------------------------------------------------------------- video


def clip_720p(seconds: int = 30, fps: int = 30) -> Path:
    """A 30 s 1280x720 mp4v clip: a camera pan over photo content, generated once."""
    import cv2

    path = CACHE / f"pan_720p_{seconds}s.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    scene = np.asarray(collage((2560, 1440)))[..., ::-1]  # OpenCV wants BGR
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    n = seconds * fps
    for i in range(n):
        x, y = (1280 * i) // n, (720 * i) // n
        writer.write(np.ascontiguousarray(scene[y : y + 720, x : x + 1280]))
    writer.release()
    tmp.rename(path)
    return path


def bench_video(runs: int, clock: Clock, check: common.AnswerCheck) -> None:
    import importlib.util

    if importlib.util.find_spec("internvl_batch.media.video") is None:
        print("\nvideo: skipped, internvl_batch/media/video.py (sample_frames) does not exist yet")
        return
    start = time.perf_counter()
    path = str(clip_720p())
    print(f"\nvideo: {path} (ready in {time.perf_counter() - start:.1f} s)")
    from internvl_batch.media.video import sample_frames

    header = f"{'segments':>8} {'max':>3} {'tiles':>5} | {'decode':>8} {'card':>8} | {'ours':>8} {'x card':>16}"
    rows: list[str] = []
    figures: list[tuple] = []
    for segments in (8, 32):
        ref, ref_patches = card.load_video(path, num_segments=segments)
        ours, ours_patches = preprocess.load_video(path, num_segments=segments)
        if ours_patches != ref_patches:
            check.failed(f"video, {segments} segments: patches per frame {ours_patches} vs the card's {ref_patches}")
        check_equal(check, f"load_video {segments} segments", ours, ref)
        t = times_ms(
            {
                "decode": lambda: sample_frames(path, num_segments=segments),
                "card": lambda: card.load_video(path, num_segments=segments),
                "ours": lambda: preprocess.load_video(path, num_segments=segments),
            },
            runs,
            clock,
        )
        ms = {k: median(v) for k, v in t.items()}
        ratio = common.ratios(t["card"], t["ours"])
        rows.append(
            f"{segments:>8} {1:>3} {ref.shape[0]:>5} | {ms['decode']:>8.1f} {ms['card']:>8.1f} | "
            f"{ms['ours']:>8.1f} {common.fmt_spread(ratio, '.2f'):>16}"
        )
        figures.append((f"load_video vs card, {segments} segments", ratio, "x", ".2f"))
    print("\n" + header)
    print("-" * len(header))
    print("\n".join(rows) + "\n")
    for fig in figures:
        common.emit(*fig)


def main() -> int:
    common.use_this_checkout()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", "--repeats", type=int, default=7, help="timed runs per case (default 7)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    parser.add_argument("--cpu", type=int, help="pin the process to this core")
    parser.add_argument("--no-video", action="store_true", help="skip the video cases")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(f"clock: {args.clock}; torch threads {torch.get_num_threads()}; ms per image or per video\n")
    check = common.AnswerCheck()
    bench_images(args.runs, clock, check)
    if not args.no_video:
        bench_video(max(min(3, args.runs), args.runs // 2), clock, check)
    return check.exit_code()


if __name__ == "__main__":
    sys.exit(main())
