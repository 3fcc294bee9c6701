// fsprobe looks at the files a pod's volumes give a WebAssembly module.
//
//	fsprobe cat PATH...        print "PATH: CONTENT" for each file (or "PATH: error: ...")
//	fsprobe ls DIR             print the names in DIR, sorted, one per line
//	fsprobe write PATH TEXT    write TEXT to PATH, print "wrote PATH" or "PATH: error: ..."
//	fsprobe size PATH          print "PATH: N bytes" (for files whose content is secret)
//	fsprobe watch PATH         print the file's content whenever it changes, forever
//	fsprobe fill PATH BYTES    write BYTES zero bytes to PATH, print "filled PATH", then sleep forever
//	fsprobe plant DIR          create DIR/etc/hostname holding "inside"
//	fsprobe flip DIR           print "flipping", then swap DIR for a symlink to the host's / and back,
//	                           forever, as fast as it can (the subPath race of CVE-2017-1002101)
//	fsprobe hold PATH N        open PATH (created) N times without closing, print "held K: ERROR"
//	                           (or "held N") and how far it got, then sleep forever
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Println("usage: fsprobe cat|ls|write|size|watch PATH...")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "cat":
		for _, path := range args {
			data, err := os.ReadFile(path)
			if err != nil {
				fmt.Printf("%s: error: %v\n", path, err)
				continue
			}
			fmt.Printf("%s: %s\n", path, data)
		}
	case "ls":
		entries, err := os.ReadDir(args[0])
		if err != nil {
			fmt.Printf("%s: error: %v\n", args[0], err)
			os.Exit(1)
		}
		names := []string{}
		for _, entry := range entries {
			names = append(names, entry.Name())
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Println(name)
		}
	case "write":
		if err := os.WriteFile(args[0], []byte(args[1]), 0o644); err != nil {
			fmt.Printf("%s: error: %v\n", args[0], err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s\n", args[0])
	case "size":
		info, err := os.Stat(args[0])
		if err != nil {
			fmt.Printf("%s: error: %v\n", args[0], err)
			os.Exit(1)
		}
		fmt.Printf("%s: %d bytes\n", args[0], info.Size())
	case "watch":
		last := ""
		for {
			data, err := os.ReadFile(args[0])
			text := string(data)
			if err != nil {
				text = "error: " + err.Error()
			}
			if text != last {
				fmt.Printf("%s: %s\n", args[0], text)
				last = text
			}
			time.Sleep(200 * time.Millisecond)
		}
	case "fill":
		size, err := strconv.Atoi(args[1])
		if err == nil {
			err = os.WriteFile(args[0], make([]byte, size), 0o644)
		}
		if err != nil {
			fmt.Printf("%s: error: %v\n", args[0], err)
			os.Exit(1)
		}
		fmt.Printf("filled %s\n", args[0])
		for {
			time.Sleep(time.Hour)
		}
	case "plant":
		err := os.MkdirAll(args[0]+"/etc", 0o755)
		if err == nil {
			err = os.WriteFile(args[0]+"/etc/hostname", []byte("inside"), 0o644)
		}
		if err != nil {
			fmt.Printf("%s: error: %v\n", args[0], err)
			os.Exit(1)
		}
		fmt.Printf("planted %s\n", args[0])
	case "flip":
		dir, escape := args[0], strings.Repeat("../", 64) // relative: WASI refuses absolute targets
		fmt.Println("flipping")
		for {
			if os.Rename(dir, dir+".real") != nil {
				continue
			}
			if os.Symlink(escape, dir) == nil {
				os.Remove(dir)
			}
			os.Rename(dir+".real", dir)
		}
	case "hold":
		count, err := strconv.Atoi(args[1])
		if err == nil {
			err = os.WriteFile(args[0], []byte("x"), 0o644)
		}
		held := []*os.File{}
		for err == nil && len(held) < count {
			var file *os.File
			if file, err = os.Open(args[0]); err == nil {
				held = append(held, file)
			}
		}
		if err != nil {
			fmt.Printf("held %d: %v\n", len(held), err)
		} else {
			fmt.Printf("held %d\n", len(held))
		}
		for {
			time.Sleep(time.Hour)
		}
	default:
		fmt.Printf("unknown command %s\n", os.Args[1])
		os.Exit(2)
	}
}
