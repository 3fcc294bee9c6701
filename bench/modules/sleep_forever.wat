;; An idle hello-world pod: prints "hello" once, then sleeps an hour at a time, forever.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {ptr=200, len=6}
  (data (i32.const 0) "\c8\00\00\00\06\00\00\00")
  (data (i32.const 200) "hello\n")
  ;; subscription at 64: userdata 0, tag 0 (clock), clock id 1 (monotonic) at 80,
  ;; timeout 3600e9 ns at 88 (0x0000_0346_30B8_A000), precision 0, flags 0 (relative)
  (data (i32.const 80) "\01\00\00\00")
  (data (i32.const 88) "\00\a0\b8\30\46\03\00\00")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    (loop $forever
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20)))
      (br $forever))))
