package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// CompletionRequest is the body of POST /v1/completions (OpenAI's legacy completions API).
// Fields OpenAI clients send that the server does not implement are accepted only at their
// neutral values; any other field is an error.
type CompletionRequest struct {
	Model            string          `json:"model"`
	Prompt           json.RawMessage `json:"prompt"`
	MaxTokens        *int            `json:"max_tokens"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	N                *int            `json:"n"`
	BestOf           *int            `json:"best_of"`
	Stream           bool            `json:"stream"`
	StreamOptions    json.RawMessage `json:"stream_options"`
	Logprobs         *int            `json:"logprobs"`
	Echo             bool            `json:"echo"`
	Stop             json.RawMessage `json:"stop"`
	Seed             *int64          `json:"seed"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	LogitBias        map[string]any  `json:"logit_bias"`
	Suffix           *string         `json:"suffix"`
	User             string          `json:"user"`
}

// ChatMessage is one message of a chat request.
type ChatMessage struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

// ChatRequest is the body of POST /v1/chat/completions.
type ChatRequest struct {
	Model               string          `json:"model"`
	Messages            []ChatMessage   `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       json.RawMessage `json:"stream_options"`
	Stop                json.RawMessage `json:"stop"`
	Seed                *int64          `json:"seed"`
	PresencePenalty     *float64        `json:"presence_penalty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty"`
	LogitBias           map[string]any  `json:"logit_bias"`
	User                string          `json:"user"`
}

// apiError is an error answered as OpenAI's {"error": {...}} with an HTTP status.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   any    `json:"param"`
	Code    any    `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

func badRequest(param, format string, a ...any) *apiError {
	var p any
	if param != "" {
		p = param
	}
	return &apiError{Status: 400, Message: fmt.Sprintf(format, a...), Type: "invalid_request_error", Param: p}
}

// decodeStrict parses body into v, refusing invalid UTF-8, trailing data and unknown fields.
func decodeStrict(body []byte, v any) error {
	if !utf8.Valid(body) {
		return badRequest("", "the request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return badRequest("", "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &te):
			return badRequest(te.Field, "field %q must be %s, not %s", te.Field, te.Type, te.Value)
		}
		return badRequest("", "invalid request body: %v", err)
	}
	if dec.More() {
		return badRequest("", "the request body has data after the JSON object")
	}
	return nil
}

// Prompts are the prompts of a completion request: texts, or token ids as given.
type prompt struct {
	text   string
	tokens []int
	isText bool
}

// parsePrompt accepts a string, a list of strings, a list of token ids, or a list of lists of
// token ids (as lm-evaluation-harness sends tokenized requests).
func parsePrompt(raw json.RawMessage, vocab int) ([]prompt, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, badRequest("prompt", "prompt is required (a string, a list of strings, or token ids)")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []prompt{{text: s, isText: true}}, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil && len(ss) > 0 {
		out := make([]prompt, len(ss))
		for i, x := range ss {
			out[i] = prompt{text: x, isText: true}
		}
		return out, nil
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		if err := checkIDs(ids, vocab, "prompt"); err != nil {
			return nil, err
		}
		return []prompt{{tokens: ids}}, nil
	}
	var lists [][]int
	if json.Unmarshal(raw, &lists) == nil && len(lists) > 0 {
		out := make([]prompt, len(lists))
		for i, l := range lists {
			if len(l) == 0 {
				return nil, badRequest("prompt", "prompt %d is an empty token list", i)
			}
			if err := checkIDs(l, vocab, fmt.Sprintf("prompt[%d]", i)); err != nil {
				return nil, err
			}
			out[i] = prompt{tokens: l}
		}
		return out, nil
	}
	return nil, badRequest("prompt", "prompt must be a string, a non-empty list of strings, a list of token ids or a list of lists of token ids")
}

func checkIDs(ids []int, vocab int, what string) error {
	for i, id := range ids {
		if id < 0 || id >= vocab {
			return badRequest("prompt", "%s token %d is %d, outside the vocabulary [0, %d)", what, i, id, vocab)
		}
	}
	return nil
}

// parseStop accepts null, a string or a list of up to 4 non-empty strings.
func parseStop(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, nil
		}
		return []string{s}, nil
	}
	var ss []string
	if err := json.Unmarshal(raw, &ss); err != nil {
		return nil, badRequest("stop", "stop must be a string or a list of strings")
	}
	if len(ss) > 4 {
		return nil, badRequest("stop", "at most 4 stop sequences (got %d)", len(ss))
	}
	out := ss[:0]
	for _, x := range ss {
		if x != "" {
			out = append(out, x)
		}
	}
	return out, nil
}

// sampling are the validated generation settings shared by both endpoints.
type sampling struct {
	maxTokens   int
	temperature float64
	topP        float64
	seed        *int64
	stop        []string
}

// MaxLogprobs is the largest logprobs (top alternatives per token) a request may ask for.
const MaxLogprobs = 20

func checkCommon(maxTokens *int, defMax int, temperature, topP *float64, n *int, seed *int64, presence, frequency *float64,
	bias map[string]any, stopRaw json.RawMessage) (sampling, error) {
	s := sampling{maxTokens: defMax, temperature: 1, topP: 1, seed: seed}
	if maxTokens != nil {
		s.maxTokens = *maxTokens
	}
	if s.maxTokens < 0 {
		return s, badRequest("max_tokens", "max_tokens must be ≥ 0 (got %d)", s.maxTokens)
	}
	if temperature != nil {
		s.temperature = *temperature
	}
	if math.IsNaN(s.temperature) || s.temperature < 0 || s.temperature > 2 {
		return s, badRequest("temperature", "temperature must be in [0, 2] (got %g); 0 is greedy", s.temperature)
	}
	if topP != nil {
		s.topP = *topP
	}
	if math.IsNaN(s.topP) || s.topP <= 0 || s.topP > 1 {
		return s, badRequest("top_p", "top_p must be in (0, 1] (got %g)", s.topP)
	}
	if n != nil && *n != 1 {
		return s, badRequest("n", "n must be 1 (got %d); send several requests or several prompts instead", *n)
	}
	if (presence != nil && *presence != 0) || (frequency != nil && *frequency != 0) {
		return s, badRequest("presence_penalty", "presence_penalty and frequency_penalty are not supported (only 0)")
	}
	if len(bias) > 0 {
		return s, badRequest("logit_bias", "logit_bias is not supported")
	}
	var err error
	s.stop, err = parseStop(stopRaw)
	return s, err
}

// Logprobs is the logprobs object of a completion choice (OpenAI's legacy format): for echoed
// prompt tokens and generated tokens, the token's text, its log-probability (null for the
// first prompt token), the top alternatives by text, and the character offset of each token.
type Logprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float64           `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// CompletionChoice is one choice of a completion response or stream chunk.
type CompletionChoice struct {
	Index        int       `json:"index"`
	Text         string    `json:"text"`
	Logprobs     *Logprobs `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// Usage counts the tokens of a response.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// CompletionResponse is the answer of /v1/completions (and, with object
// "text_completion" and no usage, one stream chunk).
type CompletionResponse struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
}

// ChatChoice is one choice of a chat response; Delta is set in stream chunks.
type ChatChoice struct {
	Index        int          `json:"index"`
	Message      *ChatMessage `json:"message,omitempty"`
	Delta        *ChatMessage `json:"delta,omitempty"`
	FinishReason *string      `json:"finish_reason"`
}

// ChatResponse is the answer of /v1/chat/completions (object "chat.completion", or
// "chat.completion.chunk" for stream chunks).
type ChatResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

// ChatTemplate renders messages for a base model, the documented plain template:
//
//	System: <system message>\n\n        (for each system message)
//	User: <content>\n                   (user messages)
//	Assistant: <content>\n              (earlier assistant turns)
//	Assistant:                          (the turn to generate, no trailing space)
//
// Generation stops at "\nUser:" as well as at any stop the request gives.
func ChatTemplate(msgs []ChatMessage) (string, error) {
	var b bytes.Buffer
	for i, m := range msgs {
		switch m.Role {
		case "system", "developer":
			fmt.Fprintf(&b, "System: %s\n\n", m.Content)
		case "user":
			fmt.Fprintf(&b, "User: %s\n", m.Content)
		case "assistant":
			fmt.Fprintf(&b, "Assistant: %s\n", m.Content)
		default:
			return "", badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role is %q: use system, user or assistant", i, m.Role)
		}
	}
	b.WriteString("Assistant:")
	return b.String(), nil
}

// chatStop is the stop the chat template adds: the start of the next user turn.
const chatStop = "\nUser:"
