#!/usr/bin/python3
"""Serve H.264 or H.265 clips (MP4, or MPEG-TS for H.264 streams whose SPS changes) over RTSP,
looping each one forever (test and demo camera server). An MP4's AAC audio track is served too,
after the video in the SDP, or before it with NAME=FILE#audio-first (a camera that lists its
tracks in an unusual order).

Runs with Debian's /usr/bin/python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 -m scripts.lab.rtsp_server --port 8554 cam1=clips/a.mp4 cam2=clips/b.mp4

Each NAME=FILE is served at rtsp://127.0.0.1:PORT/NAME, over TCP or UDP as the client asks. The server prints one line
"READY <port>" to stdout once it listens, and stops on SIGTERM/SIGINT. SIGUSR1 pauses every
stream (connections stay open, no packet is sent: a stalled camera) and SIGUSR2 resumes them.

Every client gets its own pipeline (media not shared) and connections are served by up to
CLIENT_THREADS threads. GStreamer 1.22's RTSP server, with one media shared by clients that come
and go, deadlocked within a minute of reconnecting clients (a streaming thread pushing the clip's
caps against a client thread in gst_rtsp_media_is_receive_only); with its default single client
thread, that stopped every mount of the server. scripts/lab/rtsp_server_stress.py reproduces it;
it was not seen with unshared media and a thread per client.

A clip with an audio track stalls at its loop (both tracks' EOS dropped, one flushing seek: no
packet after it, not investigated further): serve such clips long enough not to loop
(`ffmpeg -stream_loop N -c copy`).

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
# MPEG-TS (tsdemux, H.264 only): concatenated clips whose SPS changes mid-stream
VIDEO = {"video/x-h264": "h264parse config-interval=-1 ! rtph264pay name={pay} pt=96 config-interval=-1",
         "video/x-h265": "h265parse config-interval=-1 ! rtph265pay name={pay} pt=96 config-interval=-1"}
AUDIO = "aacparse ! rtpmp4apay name={pay} pt=97"


def launch_for(path: str, audio_first: bool) -> str:
    """The media's launch line: its video (H.264 or H.265) and AAC audio, if any, as pay0/pay1."""
    if os.path.splitext(path)[1] == ".ts":
        return LAUNCH.format(path=path, demux="tsdemux")
    gi.require_version("GstPbutils", "1.0")
    from gi.repository import GstPbutils

    info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(Gst.filename_to_uri(path))
    video = [v.get_caps().get_structure(0).get_name() for v in info.get_video_streams()]
    has_audio = bool(info.get_audio_streams())
    if not video or video[0] not in VIDEO:
        raise ValueError(f"{path}: no H.264 or H.265 video track")
    pays = ["pay1", "pay0"] if audio_first and has_audio else ["pay0", "pay1"]
    line = f"( filesrc location={path} ! qtdemux name=d d.video_0 ! queue ! " + VIDEO[video[0]].format(pay=pays[0])
    if has_audio:
        line += " d.audio_0 ! queue ! " + AUDIO.format(pay=pays[1])
    return line + " )"


CLIENT_THREADS = 64
MEDIA = set()  # every prepared media, for pausing and resuming


def _set_all(state):
    for media in list(MEDIA):
        media.set_pipeline_state(state)
    return True  # keep the signal handler


MEDIA_LOG: list[str] = []  # its own file: GStreamer's warnings on stderr can run into a line


def _configure(media, name: str):
    if MEDIA_LOG:  # one line per client stream: RtspServer.streams_served counts them
        with open(MEDIA_LOG[0], "a") as fh:
            fh.write(f"media {name}\n")
    _loop_forever(media)
    MEDIA.add(media)
    media.connect("unprepared", MEDIA.discard)  # its client left


def _loop_forever(media):
    """Drop EOS on every payloader's sink pad and seek back to 0 (once, on the first track to
    end), so clients see an endless stream."""
    pipeline = media.get_element()
    seeking = [False]

    def seek_to_start():
        seeking[0] = False
        pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        return False

    def on_event(_pad, info):
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.EOS:
            if not seeking[0]:
                seeking[0] = True
                GLib.idle_add(seek_to_start)
            return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    for name in ("pay0", "pay1"):
        pay = pipeline.get_by_name(name)
        if pay is not None:
            pay.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--media-log", help="append a line `media NAME` here for each client stream made")
    parser.add_argument("mounts", nargs="+", help="NAME=FILE.mp4, NAME=FILE.mp4#audio-first or NAME=FILE.ts")
    args = parser.parse_args()
    if args.media_log:
        MEDIA_LOG.append(args.media_log)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mounts:
        name, _, path = spec.partition("=")
        path, _, flag = path.partition("#")
        if not name or not os.path.isfile(path) or flag not in ("", "audio-first"):
            print(f"bad mount {spec!r}: expected NAME=EXISTING_FILE[#audio-first]", file=sys.stderr)
            return 2
        factory = GstRtspServer.RTSPMediaFactory()
        try:
            factory.set_launch(launch_for(os.path.abspath(path), flag == "audio-first"))
        except (ValueError, GLib.Error) as exc:
            print(f"bad mount {spec!r}: {exc}", file=sys.stderr)
            return 2
        factory.set_shared(False)
        factory.connect("media-configure", lambda _f, media, name=name: _configure(media, name))
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
