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

    /// <summary>This system's remoting could not bind its port: the node reports that itself (<see cref="Cluster.PortUnavailableException"/>).</summary>
    private bool _bindRefused;

    private void Write(LogEvent e)
    {
        // A peer that leaves or dies closes its association; the cluster's own events (a worker "died",
        // "left") already say so in words, so the transport's stack traces about it are dropped.
        if (e.LogLevel() != LogLevel.DebugLevel && e.LogSource.Contains("ndpointWriter", StringComparison.Ordinal)
            && e.Message?.ToString()?.Contains("Disassociated", StringComparison.Ordinal) == true)
        {
            return;
        }
        // A port that cannot be bound: the node reports it itself, in one line naming the option, and the
        // remoting it failed to start then stops "abruptly", which says nothing more. Only then: elsewhere an
        // abrupt stop of remoting is news.
        if (e is Error { Cause: { } failure } && Cluster.PortUnavailableException.BindRefusal(failure) is not null
            && e.Message?.ToString()?.StartsWith("Failed to bind to ", StringComparison.Ordinal) == true)
        {
            _bindRefused = true;
            return;
        }
        if (_bindRefused && e.LogLevel() == LogLevel.ErrorLevel && e.Message?.ToString()?.StartsWith("Remoting system has been terminated abruptly", StringComparison.Ordinal) == true)
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
