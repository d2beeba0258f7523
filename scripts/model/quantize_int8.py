"""INT8 model for the CPU path: static quantisation for ONNX Runtime, calibrated on generated scenes.

    .venv/bin/python -m scripts.model.quantize_int8 [--model engines/shapes-yolov8n.onnx] \\
        [--out engines/shapes-yolov8n.int8.onnx] [--input-size 320] [--scenes 12] [--frames 8]

Calibration pictures are rendered by scripts/lab/scenes.py (calibration seeds 3000+, used nowhere
else: training uses 1000+, validation 5000+, the accuracy test 9101+) at 1920x1080, 1280x720 and
640x480, and letterboxed exactly as the daemon does (same input spec, same bilinear swscale), so
the activation ranges are the ones the daemon will see. Each picture is fed at its own letterbox
shape (the model is dynamic in height and width).

Quantisation: QDQ format, weights int8 per channel, activations uint8 (U8S8: the fast path with
AVX512-VNNI), after ONNX Runtime's own pre-processing (shape inference, graph optimisation).
The detection head's decoding (DFL softmax, anchor grid, box arithmetic, class sigmoid, concat)
stays float: it carries pixel coordinates and probabilities whose range a single uint8 scale would
crush, and it costs little. The model's input and output stay float32, so the daemon needs no
change: point `model.path` at the INT8 file (keep `model.labels`).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from pipeline.s4_infer.engine import input_spec_from_shape
from pipeline.s4_infer.preprocess import PAD_VALUE
from scripts.lab.scenes import Scene

CALIBRATION_SEEDS = 3000
SIZES = ((1920, 1080), (1280, 720), (640, 480))


def letterboxed(rgb: np.ndarray, spec) -> np.ndarray:
    """[1, 3, H, W] float32 input for one RGB picture, made as the daemon's CPU preprocessor does."""
    src_h, src_w = rgb.shape[:2]
    w, h = spec.rect_for(src_w, src_h)
    lb = spec.letterbox(src_w, src_h, w, h)
    sw, sh = lb.scaled_size
    scaled = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        width=sw, height=sh, interpolation="FAST_BILINEAR").to_ndarray(format="rgb24")
    out = np.full((1, 3, h, w), PAD_VALUE / 255, np.float32)
    out[0, :, lb.pad_y:lb.pad_y + sh, lb.pad_x:lb.pad_x + sw] = scaled.transpose(2, 0, 1) / np.float32(255)
    return out


def calibration_inputs(spec, scenes: int, frames: int) -> list[np.ndarray]:
    """Letterboxed pictures from `scenes` calibration scenes, `frames` spread over each."""
    inputs = []
    for n in range(scenes):
        width, height = SIZES[n % len(SIZES)]
        scene = Scene(CALIBRATION_SEEDS + n, width, height, frames=200)
        for frame in np.linspace(0, scene.frames - 1, frames).astype(int):
            inputs.append(letterboxed(scene.render(int(frame))[0], spec))
    return inputs


def head_decoding_nodes(model_path: Path) -> list[str]:
    """Nodes of the YOLO detection head that decode boxes and scores (everything in the last
    module that is not one of its convolution branches cv2/cv3)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    last = max(int(n.name.split("/")[1].split(".")[1]) for n in graph.node if n.name.startswith("/model."))
    head = f"/model.{last}/"
    return [n.name for n in graph.node
            if n.name.startswith(head) and not n.name.startswith((f"{head}cv2.", f"{head}cv3."))]


class _Reader:
    """Feeds calibration inputs to the quantiser one picture at a time."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._name, self._inputs = name, iter(inputs)

    def get_next(self):
        batch = next(self._inputs, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:  # pragma: no cover - only some calibrators ask
        raise NotImplementedError


def quantize(model: Path, out: Path, input_size: int, scenes: int, frames: int, method: str) -> dict:
    """Write the INT8 model; returns what was done (for the model card)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    spec = input_spec_from_shape(tuple(inp.shape), input_size)
    started = time.monotonic()
    inputs = calibration_inputs(spec, scenes, frames)
    excluded = head_decoding_nodes(model)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Reader(inp.name, inputs),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=getattr(CalibrationMethod, method),
            nodes_to_exclude=excluded,
        )
    _copy_metadata(model, out)
    return {"pictures": len(inputs), "excluded_nodes": len(excluded), "seconds": time.monotonic() - started}


def _copy_metadata(source: Path, target: Path) -> None:
    """Keep the exporter's metadata (class names, stride, image size) in the INT8 file."""
    import onnx

    src, dst = onnx.load(str(source)), onnx.load(str(target))
    have = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in have:
            dst.metadata_props.add(key=prop.key, value=prop.value)
    dst.metadata_props.add(key="quantization", value="int8 static QDQ U8S8 per-channel, scripts/model/quantize_int8.py")
    onnx.save(dst, str(target))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("engines/shapes-yolov8n.onnx"))
    parser.add_argument("--out", type=Path, default=Path("engines/shapes-yolov8n.int8.onnx"))
    parser.add_argument("--input-size", type=int, default=320, help="the daemon's model.input_size")
    parser.add_argument("--scenes", type=int, default=12, help="calibration scenes (three picture sizes in turn)")
    parser.add_argument("--frames", type=int, default=8, help="pictures per scene")
    parser.add_argument("--method", choices=("MinMax", "Percentile", "Entropy"), default="MinMax")
    args = parser.parse_args()
    done = quantize(args.model, args.out, args.input_size, args.scenes, args.frames, args.method)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) from {done['pictures']} calibration "
          f"pictures, {done['excluded_nodes']} head-decoding nodes kept float, {args.method}, "
          f"{done['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
