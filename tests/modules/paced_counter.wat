;; Prints "xxx…x 0", "xxx…x 1", ... (80 x's, then the line's number) on stdout, one line every
;; 2 ms, forever: about 64 KB of container log a second, to follow a log across its rotations.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0, written by $line (a write takes one buffer: the line is put together first)
  ;; subscription at 64 (48 bytes): userdata 0, tag 0 (clock), clock id 1 (monotonic),
  ;; timeout 2e6 ns, precision 0, flags 0 (relative)
  (data (i32.const 80) "\01\00\00\00")
  (data (i32.const 88) "\80\84\1e\00\00\00\00\00")
  (data (i32.const 300) "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx ")
  ;; puts the x's, the decimal digits of $n and a newline together so that they end at byte 199
  (func $line (param $n i32) (local $p i32)
    (i32.store8 (i32.const 199) (i32.const 10))
    (local.set $p (i32.const 199))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $n) (i32.const 0))))
    (local.set $p (i32.sub (local.get $p) (i32.const 81)))
    (memory.copy (local.get $p) (i32.const 300) (i32.const 81))
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (i32.sub (i32.const 200) (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func (export "_start") (local $i i32)
    (loop $forever
      (call $line (local.get $i))
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $forever))))
