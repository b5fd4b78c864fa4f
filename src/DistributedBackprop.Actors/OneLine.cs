using System.Globalization;
using System.Text;

namespace DistributedBackprop.Actors;

/// <summary>
/// What dbp writes to standard error as one line stays one line (the CLI's errors and status lines, and Akka's log
/// events through <see cref="StandardErrorLogger"/>): an error quotes paths, values from files and
/// names or reasons sent by peers, any of which can hold a newline (a path <c>/tmp/a⏎b.csv</c> printed its error
/// over two lines) or a terminal escape sequence (a hostile peer's reason could rewrite the operator's screen).
/// Every control character is written as a visible escape instead: <c>\n</c>, <c>\r</c>, <c>\t</c>, else <c>\u001B</c>.
/// This is the guarantee where lines leave the process; <see cref="Security.ClusterAuthority.Printable"/> still bounds a
/// peer's text where it enters a message (80 characters, control characters as '?').
/// </summary>
public static class OneLine
{
    public static string Of(string text)
    {
        int first = IndexOfControl(text);
        if (first < 0)
        {
            return text;
        }
        var line = new StringBuilder(text.Length + 8).Append(text, 0, first);
        for (int i = first; i < text.Length; i++)
        {
            char c = text[i];
            switch (c)
            {
                case '\n': line.Append("\\n"); break;
                case '\r': line.Append("\\r"); break;
                case '\t': line.Append("\\t"); break;
                default:
                    if (char.IsControl(c))
                    {
                        line.Append("\\u").Append(((int)c).ToString("X4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        line.Append(c);
                    }
                    break;
            }
        }
        return line.ToString();
    }

    /// <summary>Writes <paramref name="text"/> to standard error as one line (<see cref="Of"/>).</summary>
    public static void ToStandardError(string text) => Console.Error.WriteLine(Of(text));

    private static int IndexOfControl(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsControl(text[i]))
            {
                return i;
            }
        }
        return -1;
    }
}
