// A Go program without cgo (statically linked, its own allocator, no libc): holds some heap and sleeps.
package main

import (
	"fmt"
	"time"
)

var keep [][]byte

func main() {
	for i := 0; i < 16; i++ {
		keep = append(keep, make([]byte, 1<<20))
	}
	fmt.Println("ready")
	time.Sleep(10 * time.Minute)
}
