using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Actors.Tests;

public class LogBudgetTests
{
    [Fact]
    public void EachWindow_LogsItsFirstLines_AndTheNextLineLoggedNamesHowManyWereNot()
    {
        var window = TimeSpan.FromSeconds(10);
        long ticks = (long)(window.TotalSeconds * System.Diagnostics.Stopwatch.Frequency), t = 1_000;
        var budget = new LogBudget(2, window);

        Assert.Equal([0L, 0L, null, null, null], Enumerable.Range(0, 5).Select(_ => budget.Take(t)));
        Assert.Null(budget.Take(t + ticks - 1)); // still the first window
        Assert.Equal(4L, budget.Take(t + ticks)); // a new window: logged, naming the four before it
        Assert.Equal(0L, budget.Take(t + ticks));
        Assert.Null(budget.Take(t + ticks));
        Assert.Equal(1L, budget.Take(t + 5 * ticks));
    }
}
