// The h2spec command line, for the kit in ../shared/tools/h2spec: the kit's source lost upstream's
// cmd/h2spec (its .gitignore names "h2spec", which matched the directory), so this is a small
// main of our own over the library's h2spec.Run, with the flags our test passes. Upstream's
// command adds TLS client certificates and the client-side spec, which we do not run.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"
)

func main() {
	host := flag.String("h", "127.0.0.1", "target host")
	port := flag.Int("p", 0, "target port")
	path := flag.String("P", "/", "target path")
	timeout := flag.Int("o", 2, "time to wait for a response, in seconds")
	maxHeaderLen := flag.Int("max-header-length", 4000, "maximum length of a test header")
	junit := flag.String("j", "", "write a JUnit report to this file")
	strict := flag.Bool("S", false, "strict mode (test the SHOULDs too)")
	useTLS := flag.Bool("t", false, "connect over TLS")
	insecure := flag.Bool("k", false, "do not verify the server's certificate")
	verbose := flag.Bool("v", false, "verbose output")
	flag.Parse()
	if *port == 0 {
		fmt.Fprintln(os.Stderr, "h2spec: -p PORT is required")
		os.Exit(2)
	}
	c := &config.Config{
		Host:         *host,
		Port:         *port,
		Path:         *path,
		Timeout:      time.Duration(*timeout) * time.Second,
		MaxHeaderLen: *maxHeaderLen,
		JUnitReport:  *junit,
		Strict:       *strict,
		TLS:          *useTLS,
		Insecure:     *insecure,
		Verbose:      *verbose,
		Sections:     flag.Args(),
	}
	success, err := h2spec.Run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "h2spec:", err)
		os.Exit(2)
	}
	if !success {
		os.Exit(1)
	}
}
