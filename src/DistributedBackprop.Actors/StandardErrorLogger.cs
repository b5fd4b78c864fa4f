using Akka.Actor;
using Akka.Dispatch;
using Akka.Event;

namespace DistributedBackprop.Actors;

/// <summary>
/// Akka's logger for dbp: one line per event on standard error ("dbp 12:34:56.789 [warning] source: message"), so
/// actor-system diagnostics never mix with a command's standard output (CSV, JSON).
/// </summary>
public sealed class StandardErrorLogger : ReceiveActor, IRequiresMessageQueue<ILoggerMessageQueueSemantics>
{
    public StandardErrorLogger()
    {
        Receive<InitializeLogger>(_ => Sender.Tell(new LoggerInitialized()));
        Receive<LogEvent>(Write);
    }

    private static void Write(LogEvent e)
    {
        // A peer that leaves or dies closes its association; the cluster's own events (a worker "died",
        // "left") already say so in words, so the transport's stack traces about it are dropped.
        if (e.LogLevel() != LogLevel.DebugLevel && e.LogSource.Contains("ndpointWriter", StringComparison.Ordinal)
            && e.Message?.ToString()?.Contains("Disassociated", StringComparison.Ordinal) == true)
        {
            return;
        }
        // A port in use: the node reports it itself, in one line naming the option (PortInUseException), and
        // Akka's remoting then stops "abruptly", which says nothing more.
        if (e.LogLevel() == LogLevel.ErrorLevel && e.Message?.ToString() is { } text
            && (text.StartsWith("Failed to bind to ", StringComparison.Ordinal) || text.StartsWith("Remoting system has been terminated abruptly", StringComparison.Ordinal)))
        {
            return;
        }
        string level = e.LogLevel() switch
        {
            LogLevel.ErrorLevel => "error",
            LogLevel.WarningLevel => "warning",
            LogLevel.InfoLevel => "info",
            _ => "debug",
        };
        string source = e.LogSource.Split('/').LastOrDefault() ?? e.LogSource;
        string time = e.Timestamp.ToUniversalTime().ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture);
        string line = $"dbp {time} [{level}] {source}: {e.Message}{(e is Error { Cause: { } cause } ? ": " + cause.Message : "")}";
        OneLine.ToStandardError(line);
    }
}
