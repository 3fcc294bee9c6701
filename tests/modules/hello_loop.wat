;; Prints "Hello, World!" every second, forever (the seed's simpleserver, in WAT).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {ptr=200, len=14}
  (data (i32.const 0) "\c8\00\00\00\0e\00\00\00")
  (data (i32.const 200) "Hello, World!\n")
  ;; subscription at 64 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic),
  ;; timeout 1e9 ns, precision 0, flags 0 (relative)
  (data (i32.const 80) "\01\00\00\00")
  (data (i32.const 88) "\00\ca\9a\3b\00\00\00\00")
  (func (export "_start")
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20)))
      (br $forever))))
