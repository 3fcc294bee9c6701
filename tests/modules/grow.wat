;; Grows its memory 1 MiB at a time until the host refuses, then traps: a module over its
;; memory limit.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))
