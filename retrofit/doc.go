// Package retrofit is the application layer of dmc: what the commands do, as a library.
//
//   - LoadModel opens anything a user can name as a model (a checkpoint file or directory, a
//     hub id, a preset with its weights, a dmc export, a retrofit run directory) and returns
//     its weights, its DMC settings, its tokenizer and where it came from.
//   - ParseCache / Model.Cache choose the KV cache (auto, vanilla, dmc) once; the choice
//     gives the CPU caches, the eval cache factory and the CUDA engine's options.
//   - Run trains (a DMC retrofit or its control) into a run directory; OpenRun reads one back
//     (run.json: the inputs; model.json: what is trained); Export writes the inference format.
//   - Generate is the sampling loop over any model.Decoder (CPU or CUDA); BenchDecode measures
//     the CUDA engine.
//
// It never parses flags or prints tables: progress goes to the io.Writer it is given, results
// are returned. Error policy: every error is a user-facing message that says what to do next;
// programmer bugs panic.
package retrofit
