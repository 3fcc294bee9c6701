// Command hello-go prints "Hello, World!" and exits: a WASI command module when built with
// GOOS=wasip1 GOARCH=wasm (Go 1.21 or later), as the wasmlet.kube.wasm_module role does.
package main

import "fmt"

func main() {
	fmt.Println("Hello, World!")
}
