package workspace

// Guest-side shell programs. Arguments are passed positionally (quoted by
// guest.ShellQuote), never interpolated into the script text.

// syncDir is where a sync's control files land inside the guest repository's
// .git (git ignores unknown files there); removed at the end of each sync.
const syncDir = ".git/banger-sync"

// exitDiverged is the sync script's exit code when the VM's HEAD moved away
// from what the last sync left there (commits made in the VM, not pulled).
const exitDiverged = 86

// syncScript: $1 dir, $2 HEAD after the last sync ("" = first prepare),
// $3 new HEAD ("" = repository without commits), $4 branch ("" = detached),
// $5 non-empty = force, $6 "index" when the host's index is in the tar.
// Stdin is a tar of changed files (working tree, and .git/objects/... +
// .git/index when the object store is sent as files) plus control files:
// refs (update-ref --stdin input), deletes (NUL-separated), bundle (history
// when the object store could not be sent as files).
const syncScript = `set -eu
D=$1 PREV=$2 NEW=$3 BR=$4 FORCE=$5 MODE=$6
mkdir -p "$D"
cd "$D"
if [ -n "$PREV" ] && [ -z "$FORCE" ] && [ -f .git/HEAD ]; then
	cur=$(git rev-parse -q --verify HEAD || true)
	# Commits made in the VM block a resync until they were pulled back.
	if [ "$cur" != "$PREV" ] && ! git merge-base --is-ancestor "$cur" refs/banger/pull 2>/dev/null; then
		echo "the VM's HEAD in $D ($cur) is not what the last sync left ($PREV): pull its work back first (banger vm workspace pull) or prepare with --force" >&2
		exit 86
	fi
fi
tar -x --no-same-owner -f -
S=.git/banger-sync
[ -f .git/HEAD ] || git init -q
if [ -s "$S/bundle" ]; then
	git fetch -q --update-head-ok --no-write-fetch-head "$S/bundle" '+refs/heads/*:refs/heads/*' '+refs/tags/*:refs/tags/*'
	if git bundle list-heads "$S/bundle" | grep -q ' HEAD$'; then
		git fetch -q --no-write-fetch-head "$S/bundle" '+HEAD:refs/banger/host-head'
	fi
fi
if [ "$MODE" = index ]; then
	# The host's index describes these files; compare by size+mtime only
	# (inode, ctime and owner differ here), so nothing is rehashed.
	git config core.checkStat minimal
	git config core.trustctime false
fi
if [ -s "$S/refs" ]; then
	git update-ref --stdin < "$S/refs"
fi
if [ -n "$NEW" ]; then
	if [ -n "$BR" ]; then
		git update-ref "refs/heads/$BR" "$NEW"
		git symbolic-ref HEAD "refs/heads/$BR"
	else
		git update-ref --no-deref HEAD "$NEW"
	fi
	[ "$MODE" = index ] || git reset -q
fi
if [ -s "$S/deletes" ]; then
	# Remove the files, then the directories they leave empty (git tracks no directories).
	xargs -0 sh -c 'for f; do rm -f -- "$f"; d=$(dirname -- "$f"); [ "$d" = . ] || rmdir -p --ignore-fail-on-non-empty -- "$d" 2>/dev/null || true; done' sh < "$S/deletes" || true
fi
rm -rf "$S"
`

// pullScript: $1 dir, $2 the host's commit at the last sync, $3 vm name,
// $4 non-empty = uncommitted changes as a patch instead of a commit.
// Stdout is a tar of: tip (commit id), count (commits since $2), and when
// there is something new, bundle (refs/banger/pull) and/or patch.
const pullScript = `set -eu
D=$1 BASE=$2 VM=$3 PATCH=$4
cd "$D"
head=$(git rev-parse -q --verify 'HEAD^{commit}') || { echo "the workspace in $D has no commits" >&2; exit 2; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cp .git/index "$T/index" 2>/dev/null || true
GIT_INDEX_FILE="$T/index" git add -A
tree=$(GIT_INDEX_FILE="$T/index" git write-tree)
rm -f "$T/index"
tip=$head
if [ "$tree" != "$(git rev-parse "$head^{tree}")" ]; then
	if [ -n "$PATCH" ]; then
		git diff --binary "$head" "$tree" > "$T/patch"
	else
		git config user.name >/dev/null || export GIT_AUTHOR_NAME=banger GIT_COMMITTER_NAME=banger
		git config user.email >/dev/null || export GIT_AUTHOR_EMAIL="banger@$VM" GIT_COMMITTER_EMAIL="banger@$VM"
		tip=$(git commit-tree "$tree" -p "$head" -m "banger: uncommitted changes in vm $VM")
	fi
fi
git update-ref refs/banger/pull "$tip"
echo "$tip" > "$T/tip"
if [ -n "$BASE" ] && git cat-file -e "$BASE^{commit}" 2>/dev/null; then
	git rev-list --count "$BASE..$tip" > "$T/count"
	if ! git merge-base --is-ancestor "$tip" "$BASE"; then
		git bundle create -q "$T/bundle" refs/banger/pull --not "$BASE"
	fi
else
	git rev-list --count "$tip" > "$T/count"
	git bundle create -q "$T/bundle" refs/banger/pull
fi
cd "$T"
tar -c -f - *
`

// statusScript: $1 dir. Prints HEAD, branch and the number of changed paths.
const statusScript = `set -u
cd "$1" 2>/dev/null || { echo missing; exit 0; }
echo "$(git rev-parse -q --verify HEAD || true)"
echo "$(git symbolic-ref -q --short HEAD || true)"
git status --porcelain | wc -l
`
