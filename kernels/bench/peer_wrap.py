# Runs ../shared/tools/peer_hf_decode.py unchanged except that every call of the torch.compile'd
# forward starts a new CUDA-graph step (torch.compiler.cudagraph_mark_step_begin), without which
# transformers 5.17's static cache fails under mode="reduce-overhead" ("To prevent overwriting ...").
import runpy, sys, torch
_compile = torch.compile
def _patched(fn, *a, **k):
    c = _compile(fn, *a, **k)
    def step(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return c(*args, **kwargs)
    return step
torch.compile = _patched
sys.argv = [".devdata/peer_hf_decode.py"] + sys.argv[1:]
runpy.run_path(".devdata/peer_hf_decode.py", run_name="__main__")
