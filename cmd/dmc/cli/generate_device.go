package cli

// generateCUDA runs `dmc generate --device cuda` on the CUDA engine (generate_cuda.go).
func generateCUDA(o *GenerateOptions, lm *languageModel, streams *IO) error {
	return runGenerateCUDA(o, lm, streams)
}
