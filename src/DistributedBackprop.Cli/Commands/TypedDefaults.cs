using System.CommandLine;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.RegularExpressions;

namespace DistributedBackprop.Cli.Commands;

/// <summary>
/// Defaults in --help spelled as one types them: System.CommandLine prints a default with ToString, so an
/// enum shows as <c>CrossEntropy</c> and a list as <c>256|128</c>, and its help builder is not public in
/// 2.0. Options register the text of their default here, and the help output is rewritten line by line.
/// </summary>
internal static partial class TypedDefaults
{
    private static readonly ConditionalWeakTable<Option, string> Texts = [];

    public static T Register<T>(T option, string typed) where T : Option
    {
        Texts.AddOrUpdate(option, typed);
        return option;
    }

    /// <summary>The default of <paramref name="option"/> as typed, if it registered one.</summary>
    public static bool TryGetText(Option option, out string? typed) => Texts.TryGetValue(option, out typed);

    /// <summary>The help text of <paramref name="command"/> with each registered option's "[default: …]" as typed.</summary>
    public static string Rewrite(string help, Command command)
    {
        var byName = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (Option option in command.Options)
        {
            if (Texts.TryGetValue(option, out string? typed))
            {
                byName[option.Name] = typed;
                foreach (string alias in option.Aliases)
                {
                    byName[alias] = typed;
                }
            }
        }
        // An option's entry is its line and the continuation lines a narrow terminal wraps it into (indented,
        // not starting with an option): "[default: …]" may sit on any of them, or straddle two.
        string[] lines = help.Split('\n');
        var result = new StringBuilder(help.Length);
        for (int i = 0; i < lines.Length;)
        {
            Match name = OptionName().Match(lines[i]);
            int end = i + 1;
            if (name.Success)
            {
                while (end < lines.Length && lines[end].Length > 0 && char.IsWhiteSpace(lines[end][0]) && !OptionName().IsMatch(lines[end]))
                {
                    end++;
                }
            }
            string entry = string.Join('\n', lines[i..end]);
            if (name.Success && byName.TryGetValue(name.Groups[1].Value, out string? typed))
            {
                entry = DefaultLabel().Replace(entry, $"[default: {typed}]");
            }
            result.Append(entry);
            if (end < lines.Length)
            {
                result.Append('\n');
            }
            i = end;
        }
        return result.ToString();
    }

    [GeneratedRegex(@"^\s+(-{1,2}[\w-]+)")]
    private static partial Regex OptionName();

    [GeneratedRegex(@"\[default:\s+[^\]]*\]")]
    private static partial Regex DefaultLabel();
}
