"""Regions per second of lcfast.geometry.partition on the paper's CNN and a
torchvision-style BasicBlock network (random init, float64), slices through three
CIFAR-sized natural images (lcfast.datasets.natural_images) with a window of
`--window` input units around their centroid.

    python docs/studies/geometry_bench.py --window 0.5 --threads 1
"""
import argparse
import json
import time

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

from lcfast import datasets
from lcfast import geometry as G
from lcfast.train.models import paper_cnn


def basicblock_net():
    """Stem conv-BN-ReLU, two torchvision BasicBlocks (16 ch, the second strided with a
    1x1 downsample), max pooling, global average pooling, linear: 3x32x32 -> 10."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                         BasicBlock(16, 16), BasicBlock(16, 32, stride=2, downsample=down), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = datasets.natural_images(3, size=32)
    plane = G.Plane.through(*x)
    w = args.window / 2
    out = {}
    torch.manual_seed(0)
    for name, model in (("paper-cnn", paper_cnn().eval()), ("basicblock", basicblock_net())):
        load0 = open("/proc/loadavg").read().split()[:3]
        t0 = time.perf_counter()
        part = G.partition(model, plane, (-w, w, -w, w))
        secs = time.perf_counter() - t0
        out[name] = dict(regions=part.n_regions, seconds=round(secs, 2), regions_per_s=round(part.n_regions / secs),
                         switches=len(part.switches), load_before=load0,
                         load_after=open("/proc/loadavg").read().split()[:3], threads=args.threads,
                         window=args.window)
        print(name, json.dumps(out[name]), flush=True)


if __name__ == "__main__":
    main()
