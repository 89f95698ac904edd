// Holds a known Go heap (retained byte slices) and cgo malloc'd memory, prints runtime.MemStats, sleeps.
// usage: goholdings HEAP_MIB CGO_MIB
package main

/*
#include <stdlib.h>
#include <string.h>
static void *hold(long n) { void *p = malloc(n); if (p) memset(p, 1, n); return p; }
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

var keep [][]byte

func main() {
	heapMiB, _ := strconv.Atoi(os.Args[1])
	cgoMiB, _ := strconv.Atoi(os.Args[2])
	for i := 0; i < heapMiB*4; i++ {
		b := make([]byte, 256*1024)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	for i := 0; i < cgoMiB; i++ {
		C.hold(1 << 20)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("READY %d HeapSys=%d HeapInuse=%d HeapIdle=%d HeapReleased=%d StackSys=%d StackInuse=%d\n",
		os.Getpid(), ms.HeapSys, ms.HeapInuse, ms.HeapIdle, ms.HeapReleased, ms.StackSys, ms.StackInuse)
	for {
		time.Sleep(time.Hour)
	}
}
