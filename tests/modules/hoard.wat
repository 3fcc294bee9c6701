;; Takes argv[1] MiB of memory (default 64), 1 MiB at a time, writing a byte in every 4 KiB of it
;; so the pages are really resident, and pausing 100 ms after every 16 MiB; then sleeps forever.
;; Exits 1 if a grow is refused.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; subscription at 64 (48 bytes): userdata 0, tag 0 (clock) at 72, clock id 1 (monotonic) at
  ;; 80, timeout (ns) at 88, precision 0, flags 0 (relative); the event is written at 128.
  (data (i32.const 80) "\01\00\00\00")

  (func $sleep (param $nanos i64)
    (i64.store (i32.const 88) (local.get $nanos))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 20))))

  ;; argv[1] as a decimal number of MiB; 64 without one. Pointers at 1024, strings at 2048.
  (func $target (result i32) (local $p i32) (local $n i32) (local $b i32)
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (if (i32.lt_u (i32.load (i32.const 0)) (i32.const 2)) (then (return (i32.const 64))))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $p (i32.load (i32.const 1028)))
    (block $end (loop $digit
      (local.set $b (i32.load8_u (local.get $p)))
      (br_if $end (i32.or (i32.lt_u (local.get $b) (i32.const 48)) (i32.gt_u (local.get $b) (i32.const 57))))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $b) (i32.const 48))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $digit)))
    (local.get $n))

  (func (export "_start") (local $want i32) (local $taken i32) (local $old i32) (local $at i32) (local $end i32)
    (local.set $want (call $target))
    (block $done (loop $more
      (br_if $done (i32.ge_u (local.get $taken) (local.get $want)))
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then (call $proc_exit (i32.const 1))))
      (local.set $at (i32.mul (local.get $old) (i32.const 65536)))
      (local.set $end (i32.add (local.get $at) (i32.const 1048576)))
      (block $touched (loop $touch
        (br_if $touched (i32.ge_u (local.get $at) (local.get $end)))
        (i32.store8 (local.get $at) (i32.const 1))
        (local.set $at (i32.add (local.get $at) (i32.const 4096)))
        (br $touch)))
      (local.set $taken (i32.add (local.get $taken) (i32.const 1)))
      (if (i32.eqz (i32.rem_u (local.get $taken) (i32.const 16)))
        (then (call $sleep (i64.const 100000000))))
      (br $more)))
    (loop $forever
      (call $sleep (i64.const 1000000000))
      (br $forever))))
