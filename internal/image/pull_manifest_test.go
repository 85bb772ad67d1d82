package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/banger-dev/banger/internal/api"
)

// A registry declaring an oversized config blob or too many layers is
// refused from the manifest, before the config is read into memory or any
// layer is fetched.
func TestPullRefusesOversizedManifest(t *testing.T) {
	reg := newRegistry(t)

	cf, err := empty.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = map[string]string{"pad": strings.Repeat("x", MaxConfigBytes)}
	big, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		t.Fatal(err)
	}
	bigRef := reg.host + "/big/config:latest"
	if err := remote.Write(mustRef(t, bigRef), big); err != nil {
		t.Fatal(err)
	}

	many := make([]tent, 0, 1)
	many = append(many, file("f", "x", 0o644))
	one := layer(t, many...)
	img := empty.Image
	for range MaxLayers + 1 {
		if img, err = mutate.AppendLayers(img, one); err != nil {
			t.Fatal(err)
		}
	}
	manyRef := reg.host + "/many/layers:latest"
	if err := remote.Write(mustRef(t, manyRef), img); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct{ ref, want string }{
		{bigRef, "exceeds the 4194304-byte limit"},
		{manyRef, "layers exceed the limit of 256"},
	} {
		b := pullBuilder(t)
		_, err := b.Pull(context.Background(), PullOptions{Ref: c.ref, Insecure: true}, nil)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: err = %v, want invalid naming %q", c.ref, err, c.want)
		}
		assertNothingLeft(t, b)
	}
}

// Special files are skipped and counted; only the first MaxSkippedListed are
// named, so a layer of many FIFOs does not become a huge reply or log.
func TestPullBoundsSkippedList(t *testing.T) {
	reg := newRegistry(t)
	var ents []tent
	for i := range 3 * MaxSkippedListed {
		ents = append(ents, tent{name: fmt.Sprintf("run/fifo%d", i), typ: tar.TypeFifo, mode: 0o644})
	}
	ref := reg.push(t, "fifos/many", layer(t, ents...))
	b := pullBuilder(t)
	res, err := b.Pull(context.Background(), PullOptions{Ref: ref, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.SkippedCount != 3*MaxSkippedListed || len(res.Skipped) != MaxSkippedListed {
		t.Fatalf("skipped count %d, listed %d; want %d and %d", res.SkippedCount, len(res.Skipped), 3*MaxSkippedListed, MaxSkippedListed)
	}
}
