// virt-daemon-client drives a VM pod's Cloud Hypervisor API the way Virtink's virt-daemon
// does, with a client in the shape of Virtink's generated pkg/cloudhypervisor client: HTTP
// over the Unix socket with no keep-alive, http://localhost/api/v1/<call>, body-less PUTs,
// any status below 400 a success, an error carrying the status and the body's text, and the
// VM configuration decoded into typed structs (so unknown keys are dropped) before it is
// sent back. Written for vmm's tests (tests/virtink.rs); it shares no code with Virtink.
//
//	virt-daemon-client DIR reconcile       the Scheduled phase: create and boot if needed
//	virt-daemon-client DIR state           print vm.info's state
//	virt-daemon-client DIR power ACTION    a powerAction: PowerOff, Shutdown, Reset,
//	                                       Reboot, Pause or Resume
//
// DIR is the pod's /var/run/virtink (ch.sock and vm-config.json). Prints one line saying
// what it did; exits 1 with the error otherwise.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The configuration types: the fields of Cloud Hypervisor's API schema that a VM pod's
// configuration uses, with the schema's optionality.
type CpuTopology struct {
	ThreadsPerCore int `json:"threads_per_core,omitempty"`
	CoresPerDie    int `json:"cores_per_die,omitempty"`
	DiesPerPackage int `json:"dies_per_package,omitempty"`
	Packages       int `json:"packages,omitempty"`
}

type CpusConfig struct {
	BootVcpus int          `json:"boot_vcpus"`
	MaxVcpus  int          `json:"max_vcpus"`
	Topology  *CpuTopology `json:"topology,omitempty"`
}

type MemoryConfig struct {
	Size      int64 `json:"size"`
	Hugepages bool  `json:"hugepages,omitempty"`
	Shared    bool  `json:"shared,omitempty"`
}

type PayloadConfig struct {
	Kernel    string `json:"kernel,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
	Firmware  string `json:"firmware,omitempty"`
}

type DiskConfig struct {
	Id       string `json:"id,omitempty"`
	Path     string `json:"path"`
	Readonly bool   `json:"readonly,omitempty"`
	Direct   bool   `json:"direct,omitempty"`
}

type NetConfig struct {
	Id  string `json:"id,omitempty"`
	Mac string `json:"mac,omitempty"`
	Mtu int    `json:"mtu,omitempty"`
	Tap string `json:"tap,omitempty"`
}

type DeviceConfig struct {
	Id   string `json:"id,omitempty"`
	Path string `json:"path"`
}

type ConsoleConfig struct {
	Mode string `json:"mode"`
}

type VmConfig struct {
	Cpus    *CpusConfig     `json:"cpus,omitempty"`
	Memory  *MemoryConfig   `json:"memory,omitempty"`
	Payload *PayloadConfig  `json:"payload"`
	Disks   []*DiskConfig   `json:"disks,omitempty"`
	Net     []*NetConfig    `json:"net,omitempty"`
	Devices []*DeviceConfig `json:"devices,omitempty"`
	Console *ConsoleConfig  `json:"console,omitempty"`
	Serial  *ConsoleConfig  `json:"serial,omitempty"`
}

type VmInfo struct {
	Config           *VmConfig `json:"config"`
	State            string    `json:"state"`
	MemoryActualSize int64     `json:"memory_actual_size,omitempty"`
}

type client struct{ http *http.Client }

func newClient(socket string) *client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}
	return &client{&http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}}
}

// call makes one API call: `in` (if not nil) is sent as JSON, `out` (if not nil) decoded.
func (c *client) call(method, name string, in, out interface{}) error {
	var body io.Reader
	if in != nil {
		encoded, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %s", err)
		}
		body = bytes.NewReader(encoded)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost/api/v1/"+name, body)
	if err != nil {
		return fmt.Errorf("build request: %s", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("do request: %s", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		text, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("request failed: %d %s: %s", resp.StatusCode, http.StatusText(resp.StatusCode), text)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("decode response: %s", err)
		}
	}
	return nil
}

func (c *client) info() (*VmInfo, error) {
	var info VmInfo
	return &info, c.call("GET", "vm.info", nil, &info)
}

// reconcile is virt-daemon's Scheduled phase for one pass.
func reconcile(c *client, dir string) (string, error) {
	info, err := c.info()
	if err != nil {
		if !strings.Contains(err.Error(), "VM is not created") {
			return "", err
		}
		file, err := os.Open(filepath.Join(dir, "vm-config.json"))
		if err != nil {
			return "", fmt.Errorf("waiting prerunner prepare VM config: %s", err)
		}
		defer file.Close()
		var config VmConfig
		if err := json.NewDecoder(file).Decode(&config); err != nil {
			return "", fmt.Errorf("decode VM config: %s", err)
		}
		if err := c.call("PUT", "vm.create", &config, nil); err != nil {
			return "", fmt.Errorf("create VM: %s", err)
		}
		if err := c.call("PUT", "vm.boot", nil, nil); err != nil {
			return "", fmt.Errorf("boot VM: %s", err)
		}
		return fmt.Sprintf("created and booted: %d disks, %d nets", len(config.Disks), len(config.Net)), nil
	}
	switch info.State {
	case "Created":
		return "booted", c.call("PUT", "vm.boot", nil, nil)
	case "Running", "Paused":
		ids := []string{}
		for _, d := range info.Config.Disks {
			ids = append(ids, d.Id)
		}
		return fmt.Sprintf("phase Running: state %s, disks %s", info.State, strings.Join(ids, ",")), nil
	case "Shutdown":
		return "phase Failed", nil
	}
	return "no change: state " + info.State, nil
}

// power is a powerAction as virt-daemon turns it into a call.
func power(c *client, action string) (string, error) {
	calls := map[string]string{
		"PowerOff": "vm.shutdown",
		"Shutdown": "vm.power-button",
		"Reset":    "vm.reboot",
		"Reboot":   "vm.reboot",
		"Pause":    "vm.pause",
		"Resume":   "vm.resume",
	}
	name, ok := calls[action]
	if !ok {
		return "", fmt.Errorf("unknown powerAction %q", action)
	}
	return action + ": " + name, c.call("PUT", name, nil, nil)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: virt-daemon-client DIR reconcile|state|power ACTION")
		os.Exit(2)
	}
	dir := os.Args[1]
	c := newClient(filepath.Join(dir, "ch.sock"))
	var out string
	var err error
	switch os.Args[2] {
	case "reconcile":
		out, err = reconcile(c, dir)
	case "state":
		var info *VmInfo
		if info, err = c.info(); err == nil {
			out = "state " + info.State
		}
	case "power":
		if len(os.Args) < 4 {
			err = fmt.Errorf("power needs an action")
		} else {
			out, err = power(c, os.Args[3])
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[2])
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(out)
}
