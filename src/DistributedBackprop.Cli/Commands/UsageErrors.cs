using System.CommandLine;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// A command line's parse errors as the user should read them: one line each, an unknown option or command
/// with the closest known one ("did you mean"), and no second error for the value that followed an unknown
/// option (`--epoch 3` is one mistake, not two).
/// </summary>
internal static class UsageErrors
{
    private const string Unrecognized = "Unrecognized command or argument '";

    public static List<string> Describe(ParseResult parse, string[] args)
    {
        Command command = parse.CommandResult.Command;
        var known = new List<string>();
        foreach (Option option in command.Options)
        {
            known.Add(option.Name);
            known.AddRange(option.Aliases);
        }
        foreach (Command sub in command.Subcommands)
        {
            known.Add(sub.Name);
        }

        var unmatched = new List<string>(parse.UnmatchedTokens);
        var lines = new List<string>();
        // "Required command was not provided" beside a mistyped command says nothing more.
        bool mistypedCommand = parse.UnmatchedTokens.Count > 0 && command.Subcommands.Count > 0;
        foreach (var error in parse.Errors)
        {
            if (!error.Message.StartsWith(Unrecognized, StringComparison.Ordinal) && !(mistypedCommand && error.Message.StartsWith("Required command", StringComparison.Ordinal)))
            {
                lines.Add(error.Message);
            }
        }
        for (int i = 0; i < unmatched.Count; i++)
        {
            string token = unmatched[i];
            if (token.StartsWith('-'))
            {
                string? guess = Closest(token.Split('=', 2)[0], known.Where(k => k.StartsWith('-')));
                lines.Add($"unknown option '{token}'{(guess is null ? "" : $"; did you mean {guess}?")}");
                // Its value, if it was given one, is part of the same mistake.
                int at = Array.IndexOf(args, token);
                if (i + 1 < unmatched.Count && !unmatched[i + 1].StartsWith('-') && at >= 0 && at + 1 < args.Length && args[at + 1] == unmatched[i + 1])
                {
                    i++;
                }
            }
            else
            {
                string? guess = Closest(token, known.Where(k => !k.StartsWith('-')));
                lines.Add($"unexpected argument '{token}'{(guess is null ? "" : $"; did you mean {guess}?")}");
            }
        }
        return lines;
    }

    /// <summary>The known name nearest to <paramref name="typed"/> (edit distance at most a third of its length, at least 1 allowed; or a prefix), or null.</summary>
    public static string? Closest(string typed, IEnumerable<string> known)
    {
        string? best = null;
        int bestDistance = int.MaxValue;
        foreach (string name in known)
        {
            int distance = name.StartsWith(typed, StringComparison.Ordinal) && typed.TrimStart('-').Length >= 3 ? 1 : Distance(typed, name);
            if (distance < bestDistance || (distance == bestDistance && string.CompareOrdinal(name, best) < 0))
            {
                best = name;
                bestDistance = distance;
            }
        }
        int allowed = Math.Max(1, typed.TrimStart('-').Length / 3);
        return bestDistance <= allowed ? best : null;
    }

    /// <summary>Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of neighbours each cost 1.</summary>
    public static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }
        return d[a.Length, b.Length];
    }
}
