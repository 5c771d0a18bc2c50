# Shared by the scripts/gui-*.sh window checks (sourced): the environment of a virtual
# screen, `in_xvfb` to run a window script on one, and the pass/fail tally of `check`.

# One engine thread: on a busy 2-core machine rayon's spinning workers make a run ~3x slower.
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
unset WAYLAND_DISPLAY
export XDG_RUNTIME_DIR=/tmp/xdg-$UID; mkdir -p -m 700 "$XDG_RUNTIME_DIR"

# What every window script starts with: wait for the X server, start "$BIN" (its output into
# "$LOG"), find its window ($W; $APP is the process).
XVFB_START='
  for i in $(seq 150); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN" >"$LOG" 2>&1 & APP=$!
  W=""; for i in $(seq 120); do W=$(xdotool search --onlyvisible --name "^Mirror" 2>/dev/null | head -1); [ -n "$W" ] && break; sleep 0.5; done
  [ -n "$W" ] || { echo "no window"; kill $APP; exit 1; }
'

# Runs the window script $1 (after XVFB_START) on a 1280x800 virtual screen; BIN, LOG and
# whatever else it reads must be exported.
in_xvfb() { xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c "$XVFB_START$1"; }

pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); echo "ok   $1"; else fail=$((fail+1)); echo "FAIL $1"; fi; }
