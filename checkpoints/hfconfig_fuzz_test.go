package checkpoints

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParseHFConfig: arbitrary bytes give an HFConfig or an error, never a panic. An accepted
// config is valid, and writing it back as config.json and parsing that gives the same
// architecture (the round trip export relies on).
func FuzzParseHFConfig(f *testing.F) {
	for _, dir := range []string{"tiny-llama-f32", "tiny-llama-bf16", "tiny-llama-tied-f16"} {
		if b, err := os.ReadFile(filepath.Join("testdata", dir, "config.json")); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"model_type": "llama", "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 5, "max_position_embeddings": 4, "rope_scaling": null, "dmc": {"target_cr": 2}}`))
	f.Add([]byte(`{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 0, "head_dim": 4}`))
	f.Add([]byte(`{"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 1e400}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseHFConfig(b)
		if err != nil {
			return
		}
		if err := c.Config.Validate(); err != nil {
			t.Fatalf("accepted an invalid config: %v", err)
		}
		if c.Config.HeadDim() <= 0 || c.Config.NKVHeads <= 0 || c.Config.NHeads%c.Config.NKVHeads != 0 {
			t.Fatalf("accepted heads %d/%d, head dim %d", c.Config.NHeads, c.Config.NKVHeads, c.Config.HeadDim())
		}
		for k := range c.Extra {
			for _, known := range hfConfigKeys {
				if k == known {
					t.Fatalf("interpreted key %q also in Extra", k)
				}
			}
		}
		out, err := hfConfigJSON(c.Config, F32, nil)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := ParseHFConfig(out)
		if err != nil {
			t.Fatalf("the config.json written for an accepted config does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c.Config, c2.Config) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c.Config, c2.Config)
		}
	})
}
