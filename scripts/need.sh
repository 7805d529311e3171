# Sourced by the scripts that need system tools (scripts/test.sh, bench/run.sh): installs the
# Debian packages a script needs when they are missing, as root through apt-get; otherwise (not
# root, no apt-get, or ARBOR_NO_INSTALL=1) stops with one line naming the packages and the command
# that installs them.
#
#   need_packages "package:check" ...   each check a shell test that passes when it is there

need_packages() {
    local missing=() entry
    for entry in "$@"; do
        bash -c "${entry#*:}" || missing+=("${entry%%:*}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || [ -n "${ARBOR_NO_INSTALL:-}" ] || ! command -v apt-get >/dev/null; then
        echo "$(basename "$0"): missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
