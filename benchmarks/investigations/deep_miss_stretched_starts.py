"""Investigation (docs/accuracy.md), run as python benchmarks/investigations/deep_miss_stretched_starts.py "dln 60-64" 2.
Prototype, by patching ChainSet (not library code): stretch chains 2,3 away from w* by factor C at the start of the draws; compare groups."""
import sys, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
import lambdahat as lh
from lambdahat.chains import ChainSet
from blind_cases import cases, build
C = float(sys.argv[2]); version = sys.argv[3] if len(sys.argv) > 3 else 'v3'
case = next(c for c in cases(version) if c.name.startswith(sys.argv[1]))
task = build(case)
orig = ChainSet.__setattr__
def setattr_(self, name, value):
    if name == 'probe_active' and value is True and getattr(self, '_was_off', False) and not getattr(self, '_stretched', False):
        orig(self, '_stretched', True)
        w_star = self.job.potential.w_star
        for i, st in enumerate(self._states):
            if st is None: continue
            p = st.params
            if p.dim() == 2:
                for k in range(p.shape[0]):
                    if self.chains[k] >= 2: p[k] = w_star + C * (p[k] - w_star)
            elif self.chains[i] >= 2:
                p.copy_(w_star + C * (p - w_star))
        print('stretched at step', self.steps, flush=True)
    if name == 'probe_active' and value is False:
        orig(self, '_was_off', True)
    orig(self, name, value)
ChainSet.__setattr__ = setattr_
r = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False)
loss = r.trace.arrays['loss'][:, r.trace.num_burnin_steps:] if hasattr(r.trace, 'num_burnin_steps') else None
init = r.init_loss if hasattr(r, 'init_loss') else None
print(case.name, 'truth', float(task.truth.value), 'llc %.2f +- %.2f' % (r.llc_mean, r.llc_mcse), 'certified', r.certified,
      [c.name for c in r.checks if not c.ok])
print('per chain', getattr(r, 'llc_per_chain', None))
