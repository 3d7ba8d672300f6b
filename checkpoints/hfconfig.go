package checkpoints

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/dmc-project/dmc/model"
)

// HFConfig is a parsed Hugging Face Llama config.json: the architecture as a model.Config
// (RoPE layout RoPEHalf), the storage dtype it declares, and every top-level key this package
// does not interpret (for example the "dmc" block of an export) left raw in Extra.
type HFConfig struct {
	Config     model.Config
	TorchDType string
	Extra      map[string]json.RawMessage
}

// hfConfigKeys are the config.json keys ParseHFConfig interprets or knowingly ignores; the rest
// land in HFConfig.Extra.
var hfConfigKeys = []string{
	"architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
	"num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings",
	"rms_norm_eps", "rope_theta", "tie_word_embeddings", "rope_scaling", "rope_parameters", "torch_dtype", "dtype",
	"hidden_act", "attention_bias", "mlp_bias", "head_dim", "pretraining_tp",
}

// ReadHFConfig parses dir/config.json.
func ReadHFConfig(dir string) (HFConfig, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return HFConfig{}, fmt.Errorf("read Hugging Face config: %w", err)
	}
	c, err := ParseHFConfig(b)
	if err != nil {
		return HFConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseHFConfig parses the JSON of a LlamaForCausalLM config.json. Defaults follow
// transformers' LlamaConfig (num_key_value_heads = num_attention_heads, rope_theta 10000,
// rms_norm_eps 1e-6, tie_word_embeddings false). Features the reference forward does not
// implement (rope_scaling, biases, a head_dim other than hidden_size/num_attention_heads, an
// activation other than SiLU, another model_type) are rejected rather than silently ignored.
func ParseHFConfig(b []byte) (HFConfig, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return HFConfig{}, fmt.Errorf("config.json is not a JSON object: %w", err)
	}
	var f struct {
		Architectures     []string        `json:"architectures"`
		ModelType         string          `json:"model_type"`
		HiddenSize        int             `json:"hidden_size"`
		IntermediateSize  int             `json:"intermediate_size"`
		NumHiddenLayers   int             `json:"num_hidden_layers"`
		NumAttentionHeads int             `json:"num_attention_heads"`
		NumKeyValueHeads  *int            `json:"num_key_value_heads"`
		VocabSize         int             `json:"vocab_size"`
		MaxPosition       int             `json:"max_position_embeddings"`
		RMSNormEps        *float64        `json:"rms_norm_eps"`
		RopeTheta         *float64        `json:"rope_theta"`
		TieWordEmbeddings bool            `json:"tie_word_embeddings"`
		RopeScaling       json.RawMessage `json:"rope_scaling"`
		RopeParameters    json.RawMessage `json:"rope_parameters"`
		TorchDType        string          `json:"torch_dtype"`
		DType             string          `json:"dtype"`
		HiddenAct         string          `json:"hidden_act"`
		AttentionBias     bool            `json:"attention_bias"`
		MLPBias           bool            `json:"mlp_bias"`
		HeadDim           *int            `json:"head_dim"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return HFConfig{}, fmt.Errorf("config.json: %w", err)
	}
	if f.ModelType != "llama" && !(f.ModelType == "" && slices.Contains(f.Architectures, "LlamaForCausalLM")) {
		return HFConfig{}, fmt.Errorf("model_type is %q (architectures %v); only Llama models (model_type \"llama\", LlamaForCausalLM) are supported", f.ModelType, f.Architectures)
	}
	if rs := bytes.TrimSpace(f.RopeScaling); len(rs) > 0 && !bytes.Equal(rs, []byte("null")) {
		return HFConfig{}, fmt.Errorf("rope_scaling %s is not supported (only plain RoPE); use a model without RoPE scaling (e.g. Llama 2, not Llama 3.1+)", rs)
	}
	theta, err := ropeParametersTheta(f.RopeParameters)
	if err != nil {
		return HFConfig{}, err
	}
	if theta != nil && f.RopeTheta != nil && *theta != *f.RopeTheta {
		return HFConfig{}, fmt.Errorf("rope_theta %g disagrees with rope_parameters.rope_theta %g; fix config.json so they agree", *f.RopeTheta, *theta)
	}
	if theta != nil {
		f.RopeTheta = theta
	}
	if f.HiddenAct != "" && f.HiddenAct != "silu" {
		return HFConfig{}, fmt.Errorf("hidden_act %q is not supported; Llama uses \"silu\"", f.HiddenAct)
	}
	if f.AttentionBias || f.MLPBias {
		return HFConfig{}, fmt.Errorf("attention_bias/mlp_bias are set; bias terms are not supported by this Llama implementation")
	}
	kv := f.NumAttentionHeads
	if f.NumKeyValueHeads != nil {
		kv = *f.NumKeyValueHeads
	}
	c := model.Config{
		Dim: f.HiddenSize, HiddenDim: f.IntermediateSize, NLayers: f.NumHiddenLayers,
		NHeads: f.NumAttentionHeads, NKVHeads: kv, VocabSize: f.VocabSize, MaxSeqLen: f.MaxPosition,
		NormEps: 1e-6, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: f.TieWordEmbeddings,
	}
	if f.RMSNormEps != nil {
		c.NormEps = *f.RMSNormEps
	}
	if f.RopeTheta != nil {
		c.RopeTheta = *f.RopeTheta
	}
	if math.IsInf(c.RopeTheta, 0) || math.IsNaN(c.RopeTheta) {
		return HFConfig{}, fmt.Errorf("rope_theta %g is not a finite number", c.RopeTheta)
	}
	if f.HeadDim != nil && f.NumAttentionHeads > 0 && *f.HeadDim != f.HiddenSize/f.NumAttentionHeads {
		return HFConfig{}, fmt.Errorf("head_dim %d differs from hidden_size/num_attention_heads = %d, which is not supported", *f.HeadDim, f.HiddenSize/f.NumAttentionHeads)
	}
	if err := c.Validate(); err != nil {
		return HFConfig{}, fmt.Errorf("config.json (hidden_size→dim, intermediate_size→hidden_dim, num_hidden_layers→n_layers, num_attention_heads→n_heads, num_key_value_heads→n_kv_heads, max_position_embeddings→max_seq_len): %w", err)
	}
	out := HFConfig{Config: c, TorchDType: f.TorchDType, Extra: map[string]json.RawMessage{}}
	if out.TorchDType == "" {
		out.TorchDType = f.DType
	}
	for k, v := range raw {
		if !slices.Contains(hfConfigKeys, k) {
			out.Extra[k] = v
		}
	}
	return out, nil
}

// ropeParametersTheta reads transformers ≥ 5's "rope_parameters" ({"rope_type": "default",
// "rope_theta": θ}), which replaces rope_theta and rope_scaling. Only plain RoPE is accepted.
func ropeParametersTheta(raw json.RawMessage) (*float64, error) {
	if t := bytes.TrimSpace(raw); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	var rp map[string]any
	if err := json.Unmarshal(raw, &rp); err != nil {
		return nil, fmt.Errorf("rope_parameters must be an object: %w", err)
	}
	if typ, _ := rp["rope_type"].(string); typ != "default" {
		return nil, fmt.Errorf("rope_parameters %s: only rope_type \"default\" (plain RoPE) is supported, not scaled or per-layer variants", raw)
	}
	for k := range rp {
		if k != "rope_type" && k != "rope_theta" {
			return nil, fmt.Errorf("rope_parameters %s: field %q is not supported (only plain RoPE)", raw, k)
		}
	}
	theta, ok := rp["rope_theta"].(float64)
	if !ok {
		return nil, fmt.Errorf("rope_parameters %s has no numeric rope_theta", raw)
	}
	return &theta, nil
}

// hfConfigJSON builds the config.json of weights stored in dtype, with extra merged at the top
// level. Keys describing the architecture cannot be overridden by extra.
func hfConfigJSON(c model.Config, dtype DType, extra map[string]any) ([]byte, error) {
	m := map[string]any{
		"architectures":           []string{"LlamaForCausalLM"},
		"model_type":              "llama",
		"hidden_size":             c.Dim,
		"intermediate_size":       c.HiddenDim,
		"num_hidden_layers":       c.NLayers,
		"num_attention_heads":     c.NHeads,
		"num_key_value_heads":     c.NKVHeads,
		"vocab_size":              c.VocabSize,
		"max_position_embeddings": c.MaxSeqLen,
		"rms_norm_eps":            c.NormEps,
		"rope_theta":              c.RopeTheta,
		"rope_scaling":            nil,
		"rope_parameters":         map[string]any{"rope_type": "default", "rope_theta": c.RopeTheta},
		"tie_word_embeddings":     c.TieEmbeddings,
		"hidden_act":              "silu",
		"attention_bias":          false,
		"mlp_bias":                false,
		"head_dim":                c.HeadDim(),
		"torch_dtype":             dtype.torchName(),
		"initializer_range":       0.02,
		"use_cache":               true,
		"bos_token_id":            1,
		"eos_token_id":            2,
	}
	for k, v := range extra {
		if slices.Contains(hfConfigKeys, k) {
			return nil, fmt.Errorf("extra config key %q would override a field derived from the weights; rename it (e.g. inside a \"dmc\" block)", k)
		}
		m[k] = v
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode config.json: %w", err)
	}
	return append(b, '\n'), nil
}
