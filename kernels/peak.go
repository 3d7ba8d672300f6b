package kernels

import (
	"os"
	"strconv"
	"strings"
)

// peakBF16 lists dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, by a
// substring of the device name; the first match wins, so more specific names come first.
var peakBF16 = []struct {
	name  string
	flops float64
}{
	{"H100 PCIe", 756e12}, {"H100 NVL", 835e12}, {"H200", 989e12}, {"H100", 989e12}, {"GH200", 989e12},
	{"B200", 2250e12}, {"A100", 312e12}, {"A10G", 70e12}, {"L40S", 362e12}, {"L4", 121e12},
}

// PeakBF16FLOPS is the dense bf16 peak of the device a description names (Describe's text),
// for MFU figures; $DMC_PEAK_TFLOPS overrides it, and 0 means unknown (no MFU is reported).
func PeakBF16FLOPS(desc string) float64 {
	if v, err := strconv.ParseFloat(os.Getenv("DMC_PEAK_TFLOPS"), 64); err == nil && v > 0 {
		return v * 1e12
	}
	for _, p := range peakBF16 {
		if strings.Contains(desc, p.name) {
			return p.flops
		}
	}
	return 0
}
