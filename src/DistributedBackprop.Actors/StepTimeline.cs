using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace DistributedBackprop.Actors;

/// <summary>
/// Where a step's time goes between processes, for diagnosis: with <c>DBP_STEP_TIMELINE=DIR</c> every process of a
/// run (server, workers, local mode) writes one line per event of a step to <c>DIR/PID.tsv</c>: the monotonic clock
/// (<see cref="Stopwatch.GetTimestamp"/>, nanoseconds on Linux, the same clock for every process of one host, so
/// only a run on one machine or in network namespaces of one kernel can be read across processes), the event, the
/// step and who. <c>bench/step-timeline.py DIR</c> puts them side by side; <c>bench/cluster-vs-local.sh</c> with
/// <c>DBP_TIMELINE=1</c> does both for the cluster's rounds. Why it exists: a loopback cluster's CPU profile cannot
/// tell a step that waits on a transfer from one that waits for a core.
/// Off (the variable unset) it costs a static read per event. Lines are buffered and written at exit or per 64 KB,
/// so the file of a process that is killed may lack its last lines.
/// </summary>
public static class StepTimeline
{
    private static readonly StreamWriter? Writer = Open(Environment.GetEnvironmentVariable("DBP_STEP_TIMELINE"));
    private static readonly Lock Gate = new();

    public static bool On => Writer is not null;

    /// <summary>Records <paramref name="what"/> of step <paramref name="step"/> by <paramref name="who"/> (no tabs or line breaks).</summary>
    public static void Mark(string what, long step, string who)
    {
        if (Writer is not { } writer)
        {
            return;
        }
        long now = Stopwatch.GetTimestamp();
        lock (Gate)
        {
            writer.Write(now.ToString(CultureInfo.InvariantCulture));
            writer.Write('\t');
            writer.Write(what);
            writer.Write('\t');
            writer.Write(step.ToString(CultureInfo.InvariantCulture));
            writer.Write('\t');
            writer.WriteLine(who);
        }
    }

    /// <summary>As <see cref="Mark"/>, by parameter shard <paramref name="shard"/> ("shard-N", formatted only when on).</summary>
    public static void MarkShard(string what, long step, int shard)
    {
        if (Writer is not null)
        {
            Mark(what, step, "shard-" + shard.ToString(CultureInfo.InvariantCulture));
        }
    }

    private static StreamWriter? Open(string? directory)
    {
        if (string.IsNullOrEmpty(directory))
        {
            return null;
        }
        try
        {
            Directory.CreateDirectory(directory);
            var writer = new StreamWriter(Path.Combine(directory, $"{Environment.ProcessId}.tsv"), append: false, new UTF8Encoding(false), 64 << 10);
            writer.WriteLine($"# ticks per second {Stopwatch.Frequency}; {string.Join(' ', Environment.GetCommandLineArgs().Skip(1).Take(1))}");
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                lock (Gate)
                {
                    writer.Flush();
                }
            };
            return writer;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            Console.Error.WriteLine($"dbp: DBP_STEP_TIMELINE={directory}: cannot write there ({e.Message}); no timeline is written");
            return null;
        }
    }
}
