;; Prints "Hello, World!" once and exits 0: a WASI (preview1) command module in WebAssembly text.
;; oci_push and wasm_run take it as it is (converted with wasmtime's wat2wasm); the wasm_module
;; role pushes it with wasm_module_source pointing here.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {ptr=200, len=14}; fd_write stores the bytes written at 16
  (data (i32.const 0) "\c8\00\00\00\0e\00\00\00")
  (data (i32.const 200) "Hello, World!\n")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
