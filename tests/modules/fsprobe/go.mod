module wasmlet.test/fsprobe

go 1.21
