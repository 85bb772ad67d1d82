package api

// MethodImagePull pulls an OCI image from a registry and builds a banger
// image from it. Progress events carry the stage ("resolve", "pull",
// "customize", "mkfs", "commit"); during "pull" Current/Total are compressed
// layer bytes read so far and in all.
const MethodImagePull = "image.pull"

type ImagePullParams struct {
	Ref       string `json:"ref"`                  // e.g. docker.io/library/debian:bookworm
	Name      string `json:"name,omitempty"`       // default: derived from ref ("debian-bookworm")
	KernelRef string `json:"kernel_ref,omitempty"` // default kernel for VMs of this image
	Size      string `json:"size,omitempty"`       // rootfs size ("4G"); default content + headroom
	Insecure  bool   `json:"insecure,omitempty"`   // allow a plain-HTTP registry
}

// ImagePullResult is the image plus whether the pull changed anything.
type ImagePullResult struct {
	Image        Image    `json:"image"`
	Unchanged    bool     `json:"unchanged,omitempty"`     // same digest already present: nothing done
	Skipped      []string `json:"skipped,omitempty"`       // device nodes and FIFOs left out (the first 100)
	SkippedCount int      `json:"skipped_count,omitempty"` // all of them
}
