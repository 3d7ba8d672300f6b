# Regenerates the transformers-written fixtures in this folder (run where torch, transformers
# and safetensors are installed):  OUT=. python3 make_fixtures.py ; rm */generation_config.json
# Made with torch 2.11.0+cu130, transformers 5.17.0, safetensors 0.8.0.
import json, os, torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM
from safetensors.torch import save_file
out = os.environ["OUT"]
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, rms_norm_eps=1e-5,
                  rope_theta=500000.0, tie_word_embeddings=False)
m = LlamaForCausalLM(cfg).eval()
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.2)
toks = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4]])
for name, dt in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
    mm = m.to(dt)
    d = os.path.join(out, "tiny-llama-" + name)
    mm.save_pretrained(d, max_shard_size="20KB", safe_serialization=True)
    with torch.no_grad():
        lg = mm.float()(toks).logits[0]
    json.dump({"tokens": toks[0].tolist(), "logits": lg.flatten().tolist()}, open(os.path.join(d, "logits.json"), "w"))
    m = mm.float()
# tied variant, single file
cfg2 = LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2, vocab_size=32, max_position_embeddings=16, tie_word_embeddings=True)
m2 = LlamaForCausalLM(cfg2).eval()
d = os.path.join(out, "tiny-llama-tied-f16")
m2.half().save_pretrained(d, safe_serialization=True)
with torch.no_grad():
    lg = m2.float()(toks % 32).logits[0]
json.dump({"tokens": (toks % 32)[0].tolist(), "logits": lg.flatten().tolist()}, open(os.path.join(d, "logits.json"), "w"))
# special values in every float dtype, written by the reference library
vals = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.1, 65504.0, 65520.0, 1e6, float("inf"), float("-inf"), float("nan"),
                     3.4028234663852886e38, 1e-45, 2**-24, 3*2**-25, 2**-133, 1.00390625, 1.01171875, 1e-40], dtype=torch.float32)
save_file({"f32": vals, "f16": vals.half(), "bf16": vals.bfloat16(), "m": torch.arange(6, dtype=torch.float32).view(2, 3)},
          os.path.join(out, "special.safetensors"), metadata={"format": "pt"})
json.dump({"f32": [v.hex() for v in vals.tolist()], "f16": [v.hex() for v in vals.half().float().tolist()],
           "bf16": [v.hex() for v in vals.bfloat16().float().tolist()],
           "torch_version": torch.__version__, "transformers_version": transformers.__version__},
          open(os.path.join(out, "special.json"), "w"))
