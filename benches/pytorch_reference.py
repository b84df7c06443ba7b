"""PyTorch side of `archsearch bench-train`: trains the reference networks
(the same as crates/archsearch-train/src/nets/reference.rs) on Fashion-MNIST
and prints ms/step as JSON lines.

    python benches/pytorch_reference.py --threads 1 --steps 200
    python benches/pytorch_reference.py --procs 2 --threads 1   # concurrent processes
"""
import argparse, gzip, json, multiprocessing as mp, os, struct, time

import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def load(data_dir):
    def idx(name):
        with gzip.open(os.path.join(data_dir, name + ".gz"), "rb") as f:
            raw = f.read()
        ndim = raw[3]
        dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)
    x = idx("train-images-idx3-ubyte").float() / 255.0
    y = idx("train-labels-idx1-ubyte").long()
    x = (x - 0.2860) / 0.3530
    return x.unsqueeze(1).contiguous(), y


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def run(net, steps, threads, batch, data_dir, seed=0, device="cpu"):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y = load(data_dir)
    x, y = x.to(device), y.to(device)
    model = {"cnn": Cnn, "mlp": Mlp}[net]().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(x.shape[0]).to(device)
    def step(i):
        idx = order[(i * batch) % (x.shape[0] - batch):][:batch]
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss
    for i in range(10):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    loss.item()
    dt = time.perf_counter() - t
    return {"side": "pytorch", "net": net, "threads": threads, "batch": batch, "steps": steps, "device": device,
            "ms_per_step": 1000 * dt / steps, "steps_per_second": steps / dt}


def _worker(args):
    return run(*args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="cnn,mlp")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--procs", type=int, default=1, help="concurrent training processes")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    for net in a.nets.split(","):
        if a.procs == 1:
            print(json.dumps(run(net, a.steps, a.threads, a.batch, a.data, device=a.device)), flush=True)
        else:
            with mp.get_context("spawn").Pool(a.procs) as pool:
                t = time.perf_counter()
                rs = pool.map(_worker, [(net, a.steps, a.threads, a.batch, a.data, s) for s in range(a.procs)])
            total = sum(r["steps_per_second"] for r in rs)
            print(json.dumps({"side": "pytorch", "net": net, "procs": a.procs, "threads": a.threads,
                              "total_steps_per_second": total}), flush=True)


if __name__ == "__main__":
    main()
