package synth

import (
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
)

// Separator ends every story, as in TinyStories.
const Separator = "<|endoftext|>"

var (
	names    = []string{"Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack", "Emma", "Leo", "Rosa", "Kai"}
	animals  = []string{"dog", "cat", "bird", "frog", "bunny", "duck", "fox", "bear", "fish", "pony"}
	places   = []string{"park", "garden", "forest", "beach", "farm", "river", "hill", "lake", "town", "school"}
	objects  = []string{"ball", "kite", "box", "hat", "book", "cake", "boat", "drum", "shell", "key", "toy", "map"}
	colors   = []string{"red", "blue", "green", "yellow", "big", "small", "shiny", "soft", "old", "new"}
	feelings = []string{"happy", "sad", "scared", "excited", "tired", "proud", "angry", "curious"}
	weather  = []string{"sunny", "rainy", "windy", "cold", "warm", "cloudy"}
	actions  = []string{"play", "run", "jump", "sing", "dance", "swim", "read", "draw"}
)

// Story returns one story drawn from rng.
func Story(rng *rand.Rand) string {
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	hero, friend := pick(names), pick(names)
	for friend == hero {
		friend = pick(names)
	}
	pet, place, obj, color := pick(animals), pick(places), pick(objects), pick(colors)
	act := pick(actions)
	var b strings.Builder
	fmt.Fprintf(&b, "Once upon a time, there was a little %s named %s. ", pick([]string{"girl", "boy", "kid"}), hero)
	fmt.Fprintf(&b, "%s had a %s %s and a pet %s. ", hero, color, obj, pet)
	fmt.Fprintf(&b, "One %s day, %s went to the %s with the %s. ", pick(weather), hero, place, pet)
	fmt.Fprintf(&b, "At the %s, %s met %s. ", place, hero, friend)
	fmt.Fprintf(&b, "%s said, \"Do you want to %s with me?\" ", friend, act)
	if rng.IntN(2) == 0 {
		fmt.Fprintf(&b, "%s said, \"Yes! Let us %s!\" They liked to %s together. ", hero, act, act)
	} else {
		fmt.Fprintf(&b, "%s was %s and said, \"No, I want to find my %s.\" ", hero, pick(feelings), obj)
	}
	switch rng.IntN(3) {
	case 0:
		fmt.Fprintf(&b, "Then the %s %s was lost. %s looked under a tree and %s looked near the water. ", color, obj, hero, friend)
		fmt.Fprintf(&b, "The %s found the %s %s and gave it to %s. ", pet, color, obj, hero)
		fmt.Fprintf(&b, "%s was %s. %s said, \"Thank you, %s!\" ", hero, pick(feelings), hero, pet)
	case 1:
		fmt.Fprintf(&b, "It started to rain, so %s and %s ran home. ", hero, friend)
		fmt.Fprintf(&b, "Mom made a warm cake and they ate it with the %s. ", pet)
	default:
		fmt.Fprintf(&b, "%s showed %s the %s %s. %s wanted to hold the %s too. ", hero, friend, color, obj, friend, obj)
		fmt.Fprintf(&b, "%s shared the %s with %s, and they were both %s. ", hero, obj, friend, pick(feelings))
	}
	fmt.Fprintf(&b, "At the end of the day, %s and the %s went home. %s smiled and went to sleep.", hero, pet, hero)
	return b.String()
}

// Write writes stories separated by Separator until at least nBytes have been written.
func Write(w io.Writer, nBytes int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 42))
	written := 0
	for written < nBytes {
		s := Story(rng) + "\n" + Separator + "\n"
		n, err := io.WriteString(w, s)
		if err != nil {
			return err
		}
		written += n
	}
	return nil
}
