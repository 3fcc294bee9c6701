;; Prints "tick" every @INTERVAL_NS@ ns, forever (the log-latency probe).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {ptr=200, len=5}
  (data (i32.const 0) "\c8\00\00\00\05\00\00\00")
  (data (i32.const 200) "tick\n")
  ;; subscription at 64: clock id 1 (monotonic) at 80, timeout at 88 (set in _start)
  (data (i32.const 80) "\01\00\00\00")
  (func (export "_start")
    (i64.store (i32.const 88) (i64.const @INTERVAL_NS@))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20)))
      (br $forever))))
