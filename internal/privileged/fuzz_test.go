package privileged

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"github.com/banger-dev/banger/internal/hostnet"
)

// guardFake fails the fuzz target when a call reaches the implementation
// with an argument the rules refuse: validation must come first, always.
type guardFake struct {
	*fakePriv
	r   Rules
	bad []error
}

func (g *guardFake) check(err error) {
	if err != nil {
		g.bad = append(g.bad, err)
	}
}
func (g *guardFake) CreateTap(ctx context.Context, name string, uid int) error {
	g.check(errors.Join(g.r.PoolTap(name), g.r.TapOwner(uid)))
	return g.fakePriv.CreateTap(ctx, name, uid)
}
func (g *guardFake) DeleteTap(ctx context.Context, name string) error {
	g.check(g.r.AnyTap(name))
	return g.fakePriv.DeleteTap(ctx, name)
}
func (g *guardFake) ReleaseTap(ctx context.Context, name string) error {
	g.check(g.r.AnyTap(name))
	return g.fakePriv.ReleaseTap(ctx, name)
}
func (g *guardFake) OpenTap(ctx context.Context, name string) (*os.File, error) {
	g.check(g.r.PoolTap(name))
	return g.fakePriv.OpenTap(ctx, name)
}
func (g *guardFake) FlushNeigh(ctx context.Context, ip netip.Addr) error {
	g.check(g.r.GuestIP(ip))
	return g.fakePriv.FlushNeigh(ctx, ip)
}
func (g *guardFake) Apply(ctx context.Context, v hostnet.VMNet) error {
	g.check(g.r.VMNet(v))
	return g.fakePriv.Apply(ctx, v)
}
func (g *guardFake) Remove(ctx context.Context, id, tap string) error {
	g.check(g.r.removeArgs(id, tap))
	return g.fakePriv.Remove(ctx, id, tap)
}
func (g *guardFake) Prune(ctx context.Context, keep map[string]string) error {
	for id, tap := range keep {
		g.check(g.r.removeArgs(id, tap))
	}
	return g.fakePriv.Prune(ctx, keep)
}
func (g *guardFake) ListenDNS(ctx context.Context) (*hostnet.DNSConns, error) {
	return nil, errors.New("not in the fuzz target")
}

func FuzzHelperRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"create_tap","args":{"name":"bgr-p1","uid":0}}`,
		`{"op":"fw_apply","args":{"id":"0123456789ab","ip":"172.30.9.7","mac":"02:ba:ac:1e:09:07","tap":"bgr-p3","nat":true}}`,
		`{"op":"fw_prune","args":{"keep":{"0123456789ab":"bgr-p1"}}}`,
		`{"op":"flush_neigh","args":{"ip":"172.30.9.2"}}`,
		`{"op":"open_tap","args":{"name":"bgr-p0"}}`,
		`{"op":"delete_tap","args":{"name":"bgr-abc"}}`,
		`{"op":"fw_remove","args":{"id":"0123456789ab","tap":""}}`,
	} {
		f.Add([]byte(s))
	}
	r := Rules{Subnet: testSubnet, Owner: 0}
	f.Fuzz(func(t *testing.T, line []byte) {
		var req request
		if strictDecode(line, &req) != nil || bytes.Contains(line, []byte("listen_dns")) {
			return
		}
		g := &guardFake{fakePriv: newFake(), r: r}
		srv := NewServer(slog.New(slog.DiscardHandler), r, g)
		_, files, _ := srv.dispatch(context.Background(), req)
		closeAll(files)
		if len(g.bad) > 0 {
			t.Fatalf("request %q reached the implementation with refused arguments: %v", line, g.bad)
		}
	})
}
