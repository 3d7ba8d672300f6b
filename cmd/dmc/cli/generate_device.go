package cli

import "errors"

// generateCUDA is replaced by the CUDA engine wiring once package kernels provides it.
func generateCUDA(o *GenerateOptions, lm *languageModel, streams *IO) error {
	return errors.New("--device cuda: this dmc build has no CUDA engine; use --device cpu")
}
