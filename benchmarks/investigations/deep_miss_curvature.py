# Investigation (docs/accuracy.md, 'The certified miss on 60-64-28-62-61'): curvature at w*, Hutchinson
# trace, minibatch noise and the predicted step-size bias of a blind case at a given step and friction.
# python benchmarks/investigations/deep_miss_curvature.py 'dln 60-64' 1.0169e-6 0.13
import sys, math, torch, numpy as np
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
from blind_cases import cases, build
from lambdahat.potential import default_nbeta
which = sys.argv[1]
case = next(c for c in cases('v3') if c.name.startswith(which))
task = build(case)
model = task.model
x, y = task.data
n = len(x)
nbeta = default_nbeta(n)
params = [p for p in model.parameters()]
w0 = [p.detach().clone() for p in params]
def grad(xb, yb):
    for p in params: p.grad = None
    loss = task.loss_fn(model(xb), yb) if True else None
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in params]), float(loss)
def setw(vec):
    i = 0
    with torch.no_grad():
        for p, p0 in zip(params, w0):
            k = p.numel(); p.copy_(p0 + vec[i:i+k].view_as(p)); i += k
d = sum(p.numel() for p in params)
g = torch.Generator().manual_seed(0)
# Hutchinson trace of H (full batch) by central differences
h = 1e-3
vals = []
for k in range(30):
    z = (torch.randint(0, 2, (d,), generator=g) * 2 - 1).float()
    setw(h * z); gp, _ = grad(x, y)
    setw(-h * z); gm, _ = grad(x, y)
    vals.append(float(z @ (gp - gm)) / (2 * h))
setw(torch.zeros(d))
trH = np.mean(vals); se = np.std(vals) / math.sqrt(len(vals))
# power iteration for top eigenvalue
v = torch.randn(d, generator=g); v /= v.norm()
for it in range(30):
    setw(h * v); gp, _ = grad(x, y); setw(-h * v); gm, _ = grad(x, y)
    hv = (gp - gm) / (2 * h); lam = float(v @ hv); v = hv / hv.norm()
setw(torch.zeros(d))
# minibatch noise E||g1-g2||^2 at B=256
B = 256; diffs = []
for k in range(20):
    i1 = torch.randperm(n, generator=g)[:B]; i2 = torch.randperm(n, generator=g)[:B]
    g1, _ = grad(x[i1], y[i1]); g2, _ = grad(x[i2], y[i2]); diffs.append(float((g1 - g2).pow(2).sum()))
noise = np.mean(diffs)
lam_true = float(task.truth.value)
eps = float(sys.argv[2]); alpha = float(sys.argv[3])
print(case.name, 'd', d, 'n', n, 'nbeta %.1f' % nbeta, 'truth', lam_true)
print('tr(nbH) = %.3g +- %.2g   nb*a_max = %.3g   eps*nb*a_max = %.3g' % (nbeta * trH, nbeta * se, nbeta * lam, eps * nbeta * lam))
print('SGLD step bias at eps: %.3g (%.2f%% of truth); SGHMC half: %.3g' % (eps / 8 * nbeta * trH, 100 * eps / 8 * nbeta * trH / lam_true, eps / 16 * nbeta * trH))
print('noise bias SGHMC at eps, alpha: %.3g (%.2f%%); at alpha=1: %.3g' % (eps * nbeta**2 * noise / (16 * alpha), 100 * eps * nbeta**2 * noise / (16 * alpha) / lam_true, eps * nbeta**2 * noise / 16))
print('eps for 2%% step bias (SGLD): %.3g (x%.1f chosen); stability eps*nb*a_max<1 at %.3g' % (0.02 * lam_true * 8 / (nbeta * trH), 0.02 * lam_true * 8 / (nbeta * trH) / eps, 1 / (nbeta * lam)))
