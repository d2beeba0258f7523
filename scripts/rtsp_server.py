#!/usr/bin/python3
"""Serve H.264 clips (MP4, or MPEG-TS for streams whose SPS changes) over RTSP, looping each one
forever (test and demo camera server).

Runs with Debian's /usr/bin/python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 cam1=clips/a.mp4 cam2=clips/b.mp4

Each NAME=FILE is served at rtsp://127.0.0.1:PORT/NAME. The server prints one line
"READY <port>" to stdout once it listens, and stops on SIGTERM/SIGINT. SIGUSR1 pauses every
stream (connections stay open, no packet is sent: a stalled camera) and SIGUSR2 resumes them.

Every client gets its own pipeline (media not shared) and connections are served by up to
CLIENT_THREADS threads. GStreamer 1.22's RTSP server, with one media shared by clients that come
and go, deadlocked within a minute of reconnecting clients (a streaming thread pushing the clip's
caps against a client thread in gst_rtsp_media_is_receive_only); with its default single client
thread, that stopped every mount of the server. scripts/rtsp_server_stress.py reproduces it;
it was not seen with unshared media and a thread per client.

A clip must end at the resolution it starts with. Each loop is a flushing seek back to 0; when the
clip's first caps differ from its last, the payloader's new caps and the seek's state change
(handled by the media in a client thread, gst_rtsp_media_is_receive_only) wait on each other's
locks, and that client gets no packet again. A 360p -> 720p clip did this within a minute or two
of streaming (`rtsp_server_stress.py --stay 30,60`; the test suite saw cameras stall at the clip's
end); 360p -> 720p -> 360p did not in three runs, about 50 client-minutes of streams.
"""
import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( filesrc location={path} ! {demux} ! h264parse config-interval=-1 ! "
    "rtph264pay name=pay0 pt=96 config-interval=-1 )"
)
DEMUXERS = {".mp4": "qtdemux", ".ts": "tsdemux"}  # MPEG-TS: concatenated clips change SPS mid-stream


CLIENT_THREADS = 64
MEDIA = set()  # every prepared media, for pausing and resuming


def _set_all(state):
    for media in list(MEDIA):
        media.set_pipeline_state(state)
    return True  # keep the signal handler


def _configure(media):
    _loop_forever(media)
    MEDIA.add(media)
    media.connect("unprepared", MEDIA.discard)  # its client left


def _loop_forever(media):
    """Drop EOS on pay0's sink pad and seek back to 0, so clients see an endless stream."""
    pipeline = media.get_element()
    pay = pipeline.get_by_name("pay0")
    pad = pay.get_static_pad("sink")

    def seek_to_start():
        pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        return False

    def on_event(_pad, info):
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.EOS:
            GLib.idle_add(seek_to_start)
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("mounts", nargs="+", help="NAME=FILE.mp4 or NAME=FILE.ts")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mounts:
        name, _, path = spec.partition("=")
        if not name or not os.path.isfile(path):
            print(f"bad mount {spec!r}: expected NAME=EXISTING_FILE", file=sys.stderr)
            return 2
        factory = GstRtspServer.RTSPMediaFactory()
        demux = DEMUXERS.get(os.path.splitext(path)[1], "qtdemux")
        factory.set_launch(LAUNCH.format(path=os.path.abspath(path), demux=demux))
        factory.set_shared(False)
        factory.connect("media-configure", lambda _f, media: _configure(media))
        mounts.add_factory(f"/{name}", factory)
    server.get_thread_pool().set_max_threads(CLIENT_THREADS)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, _set_all, Gst.State.PAUSED)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, _set_all, Gst.State.PLAYING)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
