;; Sleeps 10 seconds (poll_oneoff on the monotonic clock), prints "done" and exits 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {ptr=200, len=5}
  (data (i32.const 0) "\c8\00\00\00\05\00\00\00")
  (data (i32.const 200) "done\n")
  ;; subscription at 64 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic),
  ;; timeout 10e9 ns, precision 0, flags 0 (relative)
  (data (i32.const 80) "\01\00\00\00")
  (data (i32.const 88) "\00\e4\0b\54\02\00\00\00")
  (func (export "_start")
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
