// Command vcsim runs govmomi's vCenter simulator (simulator.VPX) for vebus.
//
// It builds from Debian's golang-github-vmware-govmomi-dev (govmomi 0.24) with no
// download (see build.sh). On start it prints exactly one line to stdout,
//
//	VCSIM_URL=http://127.0.0.1:<port>/sdk
//
// (https with -tls), then serves until SIGINT or SIGTERM and exits 0.
// With -tls it serves a self-signed certificate made at start (ECDSA P-256, for 127.0.0.1,
// ::1 and localhost; Go's built-in test certificate has a 1024-bit RSA key that OpenSSL
// refuses); -cert-file PATH writes it as PEM before the URL line so a client can trust it
// (vebus: `ca_file: PATH`).
// Logins: by default any non-empty user name and password is accepted (pyvmomi's
// SmartConnect with user "user", password "pass", say). With -username and -password
// (or $VCSIM_USERNAME and $VCSIM_PASSWORD, which keep the password out of the process
// list) only that login is accepted and any other is refused with InvalidLogin, as
// govmomi's vcsim command does (the check is SessionManager.Login's; govmomi 0.24 does
// not check LoginByToken or LoginExtensionByCertificate).
// Flags and defaults follow govmomi's vcsim command (-host is hosts per cluster).
// The datastores are folders under $TMPDIR (govcsim-*), removed on SIGINT/SIGTERM but
// left behind by SIGKILL: stop it with SIGTERM, or give each simulator its own TMPDIR.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	// the vSphere Automation REST API under /rest (tagging, content library): registered
	// below; functions tag VMs and hosts through it (vebus_functions.tagging)
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	// Before anything else, so that a signal sent during startup is not lost either.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	model := simulator.VPX()

	listen := flag.String("listen", "127.0.0.1:8989", "address to listen on (host:port; port 0 picks a free port)")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a self-signed certificate (default: plain HTTP)")
	certFile := flag.String("cert-file", "", "with -tls: write the server's certificate (PEM) to this file")
	username := flag.String("username", "", "the only user name a login may give (env VCSIM_USERNAME; default: any non-empty)")
	password := flag.String("password", "", "the only password a login may give (env VCSIM_PASSWORD; default: any non-empty)")
	flag.IntVar(&model.Datacenter, "dc", model.Datacenter, "number of datacenters")
	flag.IntVar(&model.Cluster, "cluster", model.Cluster, "number of clusters per datacenter")
	flag.IntVar(&model.ClusterHost, "host", model.ClusterHost, "number of hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", model.Host, "number of standalone hosts per datacenter")
	flag.IntVar(&model.Machine, "vm", model.Machine, "number of virtual machines per resource pool")
	flag.Parse()

	if flag.NArg() != 0 {
		fail("unexpected arguments: %v", flag.Args())
	}
	if *certFile != "" && !*useTLS {
		fail("-cert-file needs -tls")
	}
	// The environment is read here, not as the flags' defaults, so that -help never
	// prints a password.
	if *username == "" {
		*username = os.Getenv("VCSIM_USERNAME")
	}
	if *password == "" {
		*password = os.Getenv("VCSIM_PASSWORD")
	}
	if (*username == "") != (*password == "") {
		fail("-username and -password go together (or $VCSIM_USERNAME and $VCSIM_PASSWORD): give both or neither")
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		fail("-listen %q: expected host:port (e.g. 127.0.0.1:8989 or 127.0.0.1:0): %v", *listen, err)
	}
	for name, n := range map[string]int{
		"-dc": model.Datacenter, "-cluster": model.Cluster, "-host": model.ClusterHost,
		"-standalone-host": model.Host, "-vm": model.Machine,
	} {
		if n < 0 {
			fail("%s %d: expected a count >= 0", name, n)
		}
	}

	if err := model.Create(); err != nil {
		fail("creating the simulator inventory: %v", err)
	}

	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		// govmomi's SessionManager.Login accepts any non-empty login while Listen.User is
		// nil (or simulator.DefaultLogin itself); any other Userinfo makes it compare the
		// user name and password exactly and answer anything else with InvalidLogin.
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	var certDER []byte
	if *useTLS {
		cert, der, err := selfSigned()
		if err != nil {
			model.Remove()
			fail("making a TLS certificate: %v", err)
		}
		certDER = der
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	} else {
		model.Service.TLS = nil
	}

	model.Service.RegisterEndpoints = true // serve the REST endpoints imported above
	server := newServer(model, *listen)

	if *certFile != "" {
		block := &pem.Block{Type: "CERTIFICATE", Bytes: certDER}
		if err := os.WriteFile(*certFile, pem.EncodeToMemory(block), 0o644); err != nil {
			server.Close()
			model.Remove()
			fail("-cert-file %q: %v", *certFile, err)
		}
	}

	u := *server.URL
	u.User = nil // the URL carries the login (user:pass by default); print it without
	fmt.Fprintf(os.Stdout, "VCSIM_URL=%s\n", u.String())
	_ = os.Stdout.Sync()

	<-sig

	// Stop listening and drop every connection. Server.Close also waits for the handlers
	// in progress, and a WaitForUpdatesEx handler runs for its maxWaitSeconds even after
	// its connection is gone: wait a moment, not that long, then remove the datastore
	// folders that model.Create made under $TMPDIR.
	server.CloseClientConnections()
	closed := make(chan struct{})
	go func() {
		server.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
	}
	model.Remove()
}

// selfSigned makes a certificate for the loopback addresses that is its own CA.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim", Organization: []string{"vebus test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, der, nil
}

// newServer starts the model's service; govmomi panics when it cannot listen, this
// turns that into an error message and exit status 1.
func newServer(model *simulator.Model, listen string) (server *simulator.Server) {
	defer func() {
		if r := recover(); r != nil {
			model.Remove()
			fail("cannot listen on %s: %v", listen, r)
		}
	}()
	return model.Service.NewServer()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(1)
}
