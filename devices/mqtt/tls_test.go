package mqtt_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/devices/mqtt"
	sdkmqtt "github.com/vigilhealth/vigil/devices/sdk/mqtt"
	"github.com/vigilhealth/vigil/devices/sim/simtest"
)

// tlsBroker starts a private Mosquitto with a TLS listener on a free port, its certificate
// issued by a CA made for the test; it returns the broker URL and a pool trusting the CA.
func tlsBroker(t *testing.T) (string, *x509.CertPool) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/mosquitto"); err2 != nil {
			t.Fatalf("mosquitto not installed (apt-get install mosquitto; .ci/ensure-mosquitto does it): %v", err)
		}
		bin = "/usr/sbin/mosquitto"
	}
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	certFile := write("server.pem", "CERTIFICATE", srvDER)
	keyFile := write("server.key", "EC PRIVATE KEY", keyDER)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\ncafile %s\ncertfile %s\nkeyfile %s\n",
		port, caFile, certFile, keyFile)
	if os.Geteuid() == 0 {
		// Started as root, Mosquitto switches to its own user, which cannot enter the test's
		// private temporary directory: keep it as root for this throwaway instance.
		body += "user root\n"
	}
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-c", conf)
	out, _ := os.Create(filepath.Join(dir, "mosquitto.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait(); _ = out.Close() })
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			_ = c.Close()
			break
		}
		if i > 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "mosquitto.log"))
			t.Fatalf("private TLS mosquitto did not start: %s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return fmt.Sprintf("tls://127.0.0.1:%d", port), pool
}

// Over a TLS listener (a private Mosquitto with a test CA), Vigil and the device connect
// with the CA configured and the upload is accepted as over plain TCP.
// Verifies: REQ-DEV-100
func TestMQTTOverTLS(t *testing.T) {
	t.Parallel()
	broker, pool := tlsBroker(t)
	st := simtest.New(t, nil)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	in, err := mqtt.Start(mqtt.Config{Broker: broker, TLS: tc, Accepter: st.Devices, Recorder: st.Rec, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := in.Ready(ctx); err != nil {
		t.Fatalf("Ready over TLS: %v", err)
	}
	id := st.Device(t)
	d, err := sdkmqtt.DialDevice(ctx, sdkmqtt.DeviceConfig{Broker: broker, TLS: tc, DeviceID: id.DeviceID})
	if err != nil {
		t.Fatalf("DialDevice over TLS: %v", err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	rep := send(t, d, signed(t, id, 1, time.Now()))
	if rep.Status != mqtt.StatusAccepted {
		t.Fatalf("reply over TLS = %+v, want accepted", rep)
	}
}
