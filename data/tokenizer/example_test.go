package tokenizer_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"

	"github.com/dmc-project/dmc/data/tokenizer"
)

// Load the tokenizer that belongs to a model and use it (here the Llama 2 tokenizer from
// the project's test assets; the ids are those of Llama 2).
func Example() {
	path, err := tokenizer.Find(filepath.Join("..", "..", "..", "shared", "assets", "llama2-tokenizer"))
	if err != nil {
		fmt.Println(err)
		return
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	ids := tok.Encode("Hello world", true, false)
	fmt.Println(ids)                 // [1 15043 3186]
	fmt.Println(tok.Decode(ids))     // Hello world
	fmt.Println(tok.Piece(1, 15043)) // "Hello": no leading space right after BOS
}

// Parse a llama2.c tokenizer.bin built in memory: <unk>, BOS, EOS, the 256 byte tokens,
// then " ", "h", "i", " h", " hi" with descending scores.
func ExampleParse() {
	pieces := []string{"<unk>", "\n<s>\n", "\n</s>\n"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	pieces = append(pieces, " ", "h", "i", " h", " hi")
	data := binary.LittleEndian.AppendUint32(nil, 6) // max_token_length: len("<0x00>")
	for i, p := range pieces {
		data = binary.LittleEndian.AppendUint32(data, math.Float32bits(-float32(i)))
		data = binary.LittleEndian.AppendUint32(data, uint32(len(p)))
		data = append(data, p...)
	}
	tok, err := tokenizer.Parse(data, tokenizer.FormatAuto)
	if err != nil {
		fmt.Println(err)
		return
	}
	ids := tok.Encode("hi!", true, true) // "!" is not in the vocabulary: byte fallback
	fmt.Println(ids, tok.VocabSize())
	fmt.Printf("%q\n", tok.Decode(ids))
	// Output:
	// [1 263 36 2] 264
	// "hi!"
}
