"""Writes torch_golden.json: gradients and SGD losses computed by PyTorch in float64, for
GoldenFixtureTests to compare against DistributedBackprop's backward sweep.

    /usr/bin/python3 make_torch_golden.py      (Debian's python3-torch)

Parameters and inputs come from closed-form formulas (no RNG), so the fixture is easy to regenerate
and does not depend on either side's random generator. Parameters are stored flat in
DistributedBackprop's layout: for each layer, W [out, in] row-major (nn.Linear's layout), then b [out].
"""
import json, math
import torch

torch.set_default_dtype(torch.float64)

def case(name, sizes, hidden, output, loss, rows, steps, lr):
    layers = []
    flat = []
    k = 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            for p in (lin.weight, lin.bias):
                values = [0.6 * math.sin(1.3 * (k + i) + 0.4) / math.sqrt(fan_in) for i in range(p.numel())]
                k += p.numel()
                p.copy_(torch.tensor(values).reshape(p.shape))
        layers.append(lin)
    x = torch.tensor([[math.cos(0.7 * r + 1.1 * c) for c in range(sizes[0])] for r in range(rows)])
    labels = torch.tensor([(3 * r + 1) % sizes[-1] for r in range(rows)])
    acts = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda z: z}

    def forward(inp):
        a = inp
        for i, lin in enumerate(layers):
            z = lin(a)
            if i < len(layers) - 1:
                a = acts[hidden](z)
            else:
                a = torch.softmax(z, dim=1) if output == "softmax" else acts[output](z)
                last_z = z
        return a, last_z

    def cost(inp, lab):
        a, z = forward(inp)
        if loss == "cross_entropy":
            return torch.nn.functional.cross_entropy(z, lab)  # mean of −log softmax(z)[label]
        y = torch.nn.functional.one_hot(lab, sizes[-1]).to(a.dtype)
        return 0.5 * ((a - y) ** 2).sum(dim=1).mean()

    def flat_params():
        out = []
        for lin in layers:
            out += lin.weight.detach().flatten().tolist() + lin.bias.detach().flatten().tolist()
        return out

    params = flat_params()
    J = cost(x, labels)
    full_cost = J.item()
    J.backward()
    grads = []
    for lin in layers:
        grads += lin.weight.grad.flatten().tolist() + lin.bias.grad.flatten().tolist()
    # Plain SGD on consecutive slices of 8 rows (the lecture's update w <- w - lr dJ/dw).
    losses = []
    for s in range(steps):
        for lin in layers:
            lin.zero_grad()
        idx = torch.tensor([(s * 8 + i) % rows for i in range(8)])
        J = cost(x[idx], labels[idx])
        losses.append(J.item())
        J.backward()
        with torch.no_grad():
            for lin in layers:
                lin.weight -= lr * lin.weight.grad
                lin.bias -= lr * lin.bias.grad
    return {
        "name": name, "sizes": sizes, "hidden": hidden, "output": output, "loss": loss,
        "parameters": params, "x": x.flatten().tolist(), "labels": labels.tolist(),
        "cost": full_cost, "gradient": grads, "sgd_lr": lr, "sgd_batch_rows": 8, "sgd_losses": losses,
    }

cases = [
    case("relu-softmax-cross_entropy", [12, 9, 7, 5], "relu", "softmax", "cross_entropy", rows=24, steps=6, lr=0.5),
    case("lecture-sigmoid-mse", [6, 5, 4], "sigmoid", "sigmoid", "mse", rows=16, steps=6, lr=2.0),
    case("tanh-softmax-mse", [5, 8, 3], "tanh", "softmax", "mse", rows=10, steps=6, lr=1.0),
]
with open("torch_golden.json", "w") as f:
    json.dump({"generator": "make_torch_golden.py", "torch": torch.__version__, "cases": cases}, f)
print("wrote torch_golden.json with", len(cases), "cases")
