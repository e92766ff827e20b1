"""The script a user would write instead of `domsim extract`: same model, same 19 layers, same preprocessing
(EXIF orientation, RGB, shorter side to 224 bilinear with antialiasing, centre crop, x/127.5 - 1), same
global average pooling, batch 16, ONNX Runtime with 2 intra-op threads, one .npy per layer.

    python reference.py MODEL LAYERS_JSON IMAGES OUT
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageOps


def main(model_path, layers_json, images, out):
    names = [l["name"] for l in json.load(open(layers_json))]
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    files = sorted(os.path.relpath(os.path.join(r, f), images)
                   for r, _, fs in os.walk(images) for f in fs if not f.startswith("."))
    feats = {n: [] for n in names}

    def run(batch):
        outs = sess.run(names, {inp: np.stack(batch)})
        for n, o in zip(names, outs):
            feats[n].append(o.reshape(o.shape[0], o.shape[1], -1).mean(axis=2) if o.ndim == 4 else o)

    batch = []
    for f in files:
        try:
            im = ImageOps.exif_transpose(Image.open(os.path.join(images, f))).convert("RGB")
        except Exception:
            continue
        w, h = im.size
        s = 224 / min(w, h)
        im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
        w, h = im.size
        l, t = (w - 224) // 2, (h - 224) // 2
        x = np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) / 127.5 - 1.0
        batch.append(x.transpose(2, 0, 1))
        if len(batch) == 16:
            run(batch)
            batch = []
    if batch:
        run(batch)
    os.makedirs(out, exist_ok=True)
    for i, n in enumerate(names):
        np.save(os.path.join(out, f"{i:02d}.npy"), np.concatenate(feats[n]).astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:5])
