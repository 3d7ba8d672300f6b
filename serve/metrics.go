package serve

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus series, in a registry of their own (no process-global
// state, so tests can run several servers).
type metrics struct {
	reg                     *prometheus.Registry
	requests                *prometheus.CounterVec
	promptTokens, genTokens prometheus.Counter
	cancelled               prometheus.Counter
	queue, active           prometheus.Gauge
	slots, cr               prometheus.Gauge
	ttft, itl, queueWait    prometheus.Histogram
	stepSeconds             prometheus.Histogram
}

func newMetrics() *metrics {
	latency := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dmc_requests_total",
			Help: "HTTP requests by endpoint and status code."}, []string{"endpoint", "code"}),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "dmc_prompt_tokens_total", Help: "Prompt tokens prefilled."}),
		genTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "dmc_generation_tokens_total",
			Help: "Tokens generated (rate() of it is the output tokens/s)."}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{Name: "dmc_requests_cancelled_total",
			Help: "Requests whose client went away before the end; their cache was released at once."}),
		queue:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "dmc_queue_length", Help: "Sequences waiting for admission."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dmc_running_sequences", Help: "Sequences in the running batch."}),
		slots: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dmc_kv_slots_in_use",
			Help: "KV cache slots held, summed over (layer, sequence, KV head) rows (CUDA engine)."}),
		cr: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dmc_kv_compression_rate",
			Help: "Real compression rate of the running sequences' caches: tokens / slots (CUDA engine)."}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dmc_time_to_first_token_seconds",
			Help: "From the request's arrival to its first generated token.", Buckets: latency}),
		itl: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dmc_inter_token_latency_seconds",
			Help: "Between two generated tokens of a sequence.", Buckets: latency}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dmc_queue_wait_seconds",
			Help: "From the request's arrival to its admission into the batch.", Buckets: latency}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dmc_decode_step_seconds",
			Help: "One decode step of the running batch.", Buckets: latency}),
	}
	m.reg.MustRegister(m.requests, m.promptTokens, m.genTokens, m.cancelled, m.queue, m.active, m.slots, m.cr,
		m.ttft, m.itl, m.queueWait, m.stepSeconds)
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
